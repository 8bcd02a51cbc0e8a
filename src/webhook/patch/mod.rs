//! Pure patch builder: pod + namespace defaults + injector config -> RFC 6902 patch or a skip reason.
