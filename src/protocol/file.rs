//! Remote filesystem requests and responses (spec §3.10).
//!
//! Request and response enums have different variant orders; every request other than `Close`
//! and `CloseDir` is answered with exactly one response of the mapped variant.

use std::path::PathBuf;

use bincode::{Decode, Encode};

use super::error::{RemoteResult, ResponseError};
use super::wire::Payload;

/// Payload of `ClientMessage::FileRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum FileRequest {
    Open(OpenFileRequest),
    OpenRelative(OpenRelativeFileRequest),
    Read(ReadFileRequest),
    ReadLimited(ReadLimitedFileRequest),
    Seek(SeekFileRequest),
    Write(WriteFileRequest),
    WriteLimited(WriteLimitedFileRequest),
    /// No response.
    Close(CloseFileRequest),
    Access(AccessFileRequest),
    Xstat(XstatRequest),
    XstatFs(XstatFsRequest),
    FdOpenDir(FdOpenDirRequest),
    ReadDir(ReadDirRequest),
    /// No response.
    CloseDir(CloseDirRequest),
    GetDEnts64(GetDEnts64Request),
    ReadLink(ReadLinkFileRequest),
    ReadDirBatch(ReadDirBatchRequest),
    MakeDir(MakeDirRequest),
    MakeDirAt(MakeDirAtRequest),
    RemoveDir(RemoveDirRequest),
    Unlink(UnlinkRequest),
    UnlinkAt(UnlinkAtRequest),
    StatFs(StatFsRequest),
    XstatFsV2(XstatFsRequestV2),
    StatFsV2(StatFsRequestV2),
    Rename(RenameRequest),
    Ftruncate(FtruncateRequest),
    Futimens(FutimensRequest),
    Fchown(FchownRequest),
    Fchmod(FchmodRequest),
}

/// Payload of `DaemonMessage::File`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum FileResponse {
    Open(RemoteResult<OpenFileResponse>),
    Read(RemoteResult<ReadFileResponse>),
    ReadLimited(RemoteResult<ReadFileResponse>),
    Write(RemoteResult<WriteFileResponse>),
    WriteLimited(RemoteResult<WriteFileResponse>),
    Seek(RemoteResult<SeekFileResponse>),
    Access(RemoteResult<AccessFileResponse>),
    Xstat(RemoteResult<XstatResponse>),
    XstatFs(RemoteResult<XstatFsResponse>),
    ReadDir(RemoteResult<ReadDirResponse>),
    OpenDir(RemoteResult<OpenDirResponse>),
    GetDEnts64(RemoteResult<GetDEnts64Response>),
    ReadLink(RemoteResult<ReadLinkFileResponse>),
    ReadDirBatch(RemoteResult<ReadDirBatchResponse>),
    MakeDir(RemoteResult<()>),
    RemoveDir(RemoteResult<()>),
    Unlink(RemoteResult<()>),
    XstatFsV2(RemoteResult<XstatFsResponseV2>),
    Rename(RemoteResult<()>),
    Ftruncate(RemoteResult<()>),
    Futimens(RemoteResult<()>),
    Fchown(RemoteResult<()>),
    Fchmod(RemoteResult<()>),
}

impl FileRequest {
    /// The response carrying `error` for this request, in the response variant the client
    /// expects (spec §3.10); `None` for `Close` and `CloseDir`, which get no response at all.
    pub fn error_response(&self, error: ResponseError) -> Option<FileResponse> {
        Some(match self {
            Self::Close(_) | Self::CloseDir(_) => return None,
            Self::Open(_) | Self::OpenRelative(_) => FileResponse::Open(Err(error)),
            Self::Read(_) => FileResponse::Read(Err(error)),
            Self::ReadLimited(_) => FileResponse::ReadLimited(Err(error)),
            Self::Seek(_) => FileResponse::Seek(Err(error)),
            Self::Write(_) => FileResponse::Write(Err(error)),
            Self::WriteLimited(_) => FileResponse::WriteLimited(Err(error)),
            Self::Access(_) => FileResponse::Access(Err(error)),
            Self::Xstat(_) => FileResponse::Xstat(Err(error)),
            Self::XstatFs(_) | Self::StatFs(_) => FileResponse::XstatFs(Err(error)),
            Self::FdOpenDir(_) => FileResponse::OpenDir(Err(error)),
            Self::ReadDir(_) => FileResponse::ReadDir(Err(error)),
            Self::GetDEnts64(_) => FileResponse::GetDEnts64(Err(error)),
            Self::ReadLink(_) => FileResponse::ReadLink(Err(error)),
            Self::ReadDirBatch(_) => FileResponse::ReadDirBatch(Err(error)),
            Self::MakeDir(_) | Self::MakeDirAt(_) => FileResponse::MakeDir(Err(error)),
            Self::RemoveDir(_) => FileResponse::RemoveDir(Err(error)),
            Self::Unlink(_) | Self::UnlinkAt(_) => FileResponse::Unlink(Err(error)),
            Self::XstatFsV2(_) | Self::StatFsV2(_) => FileResponse::XstatFsV2(Err(error)),
            Self::Rename(_) => FileResponse::Rename(Err(error)),
            Self::Ftruncate(_) => FileResponse::Ftruncate(Err(error)),
            Self::Futimens(_) => FileResponse::Futimens(Err(error)),
            Self::Fchown(_) => FileResponse::Fchown(Err(error)),
            Self::Fchmod(_) => FileResponse::Fchmod(Err(error)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OpenFileRequest {
    pub path: PathBuf,
    pub open_options: OpenOptionsInternal,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OpenRelativeFileRequest {
    pub relative_fd: u64,
    pub path: PathBuf,
    pub open_options: OpenOptionsInternal,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReadFileRequest {
    pub remote_fd: u64,
    pub buffer_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReadLimitedFileRequest {
    pub remote_fd: u64,
    pub buffer_size: u64,
    pub start_from: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SeekFileRequest {
    pub fd: u64,
    pub seek_from: SeekFromInternal,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WriteFileRequest {
    pub fd: u64,
    pub write_bytes: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WriteLimitedFileRequest {
    pub remote_fd: u64,
    pub start_from: u64,
    pub write_bytes: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct CloseFileRequest {
    pub fd: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct AccessFileRequest {
    pub pathname: PathBuf,
    pub mode: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct XstatRequest {
    pub path: Option<PathBuf>,
    pub fd: Option<u64>,
    pub follow_symlink: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct XstatFsRequest {
    pub fd: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FdOpenDirRequest {
    pub remote_fd: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReadDirRequest {
    pub remote_fd: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct CloseDirRequest {
    pub remote_fd: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetDEnts64Request {
    pub remote_fd: u64,
    pub buffer_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReadLinkFileRequest {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReadDirBatchRequest {
    pub remote_fd: u64,
    /// `usize` upstream; encoded exactly like `u64`.
    pub amount: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct MakeDirRequest {
    pub pathname: PathBuf,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct MakeDirAtRequest {
    pub dirfd: u64,
    pub pathname: PathBuf,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RemoveDirRequest {
    pub pathname: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct UnlinkRequest {
    pub pathname: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct UnlinkAtRequest {
    pub dirfd: Option<u64>,
    pub pathname: PathBuf,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct StatFsRequest {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct XstatFsRequestV2 {
    pub fd: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct StatFsRequestV2 {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RenameRequest {
    pub old_path: PathBuf,
    pub new_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FtruncateRequest {
    pub fd: u64,
    pub length: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FutimensRequest {
    pub fd: u64,
    /// `None` = set both times to "now".
    pub times: Option<[Timespec; 2]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FchownRequest {
    pub fd: u64,
    pub owner: u32,
    pub group: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FchmodRequest {
    pub fd: u64,
    pub mode: u32,
}

/// Six flags, in this order on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Encode, Decode)]
pub struct OpenOptionsInternal {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub truncate: bool,
    pub create: bool,
    pub create_new: bool,
}

impl OpenOptionsInternal {
    /// The client's notion of a read-only open: `read` set, everything else clear.
    pub fn is_read_only(&self) -> bool {
        self.read && !(self.write || self.append || self.truncate || self.create || self.create_new)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum SeekFromInternal {
    Start(u64),
    End(i64),
    Current(i64),
}

impl From<SeekFromInternal> for std::io::SeekFrom {
    fn from(value: SeekFromInternal) -> Self {
        match value {
            SeekFromInternal::Start(n) => Self::Start(n),
            SeekFromInternal::End(n) => Self::End(n),
            SeekFromInternal::Current(n) => Self::Current(n),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Timespec {
    pub tv_sec: i64,
    pub tv_nsec: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct OpenFileResponse {
    pub fd: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReadFileResponse {
    pub bytes: Payload,
    pub read_amount: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct WriteFileResponse {
    pub written_amount: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct SeekFileResponse {
    pub result_offset: u64,
}

/// Unit struct: zero bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct AccessFileResponse;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct XstatResponse {
    pub metadata: MetadataInternal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct XstatFsResponse {
    pub metadata: FsMetadataInternal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct XstatFsResponseV2 {
    pub metadata: FsMetadataInternalV2,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReadDirResponse {
    pub direntry: Option<DirEntryInternal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct OpenDirResponse {
    pub fd: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetDEnts64Response {
    pub fd: u64,
    pub entries: Vec<DirEntryInternal>,
    pub result_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReadLinkFileResponse {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReadDirBatchResponse {
    pub fd: u64,
    /// Empty = end of directory.
    pub dir_entries: Vec<DirEntryInternal>,
}

/// `stat` result. The client reads the three time fields as nanoseconds since the epoch
/// (spec §7.1: the reference agent sends only the sub-second part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct MetadataInternal {
    pub device_id: u64,
    pub inode: u64,
    pub mode: u32,
    pub hard_links: u64,
    pub user_id: u32,
    pub group_id: u32,
    pub rdevice_id: u64,
    pub size: u64,
    pub access_time: i64,
    pub modification_time: i64,
    /// The inode **change** time (st_ctime).
    pub creation_time: i64,
    pub block_size: u64,
    pub blocks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct FsMetadataInternal {
    pub filesystem_type: i64,
    pub block_size: i64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct FsMetadataInternalV2 {
    pub filesystem_type: i64,
    pub block_size: i64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub filesystem_id: [i32; 2],
    pub name_len: i64,
    pub fragment_size: i64,
    pub flags: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DirEntryInternal {
    pub inode: u64,
    /// 0-based index of the entry in the directory stream.
    pub position: u64,
    pub name: String,
    /// `DT_*` value.
    pub file_type: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §3.10 "Response" column: request index → response index (None = no response).
    const RESPONSE_INDEX: [Option<u8>; 30] = [
        Some(0),
        Some(0),
        Some(1),
        Some(2),
        Some(5),
        Some(3),
        Some(4),
        None,
        Some(6),
        Some(7),
        Some(8),
        Some(10),
        Some(9),
        None,
        Some(11),
        Some(12),
        Some(13),
        Some(14),
        Some(14),
        Some(15),
        Some(16),
        Some(16),
        Some(8),
        Some(17),
        Some(17),
        Some(18),
        Some(19),
        Some(20),
        Some(21),
        Some(22),
    ];

    #[test]
    fn error_responses_use_the_mapped_variant() {
        let config = bincode::config::standard();
        for (index, want) in RESPONSE_INDEX.iter().enumerate() {
            // The smallest valid request of each variant: its index followed by zeroed fields
            // (zero-length paths, absent options, zero integers, false flags).
            let mut bytes = vec![index as u8];
            bytes.extend_from_slice(&[0; 16]);
            let (request, _): (FileRequest, usize) =
                bincode::decode_from_slice(&bytes, config).expect("decodes");
            let response = request.error_response(ResponseError::NotImplemented);
            let got = response.map(|r| bincode::encode_to_vec(r, config).unwrap()[0]);
            assert_eq!(got, *want, "request index {index}: {request:?}");
        }
    }
}
