//! `mirrord-operator certs`: development certificates written with rcgen.
