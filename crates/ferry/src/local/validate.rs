//! Checks on what a client asks for, with the daemon's rules and error codes, so a request
//! is refused the same way whichever kind of session it goes to.

use std::path::Path;

use ferry_engine::http::{HeaderMap, HeaderName, HeaderValue};
use ferry_proto::{
    DownloadRequest, ErrorInfo, Headers, TaskId, TaskState, UploadBody, UploadMethod, UploadRequest,
};

use super::state::Upload;

/// Longest tag accepted (SPEC §5).
const MAX_TAG_BYTES: usize = 4096;

/// Checks a download request as the daemon's `create_download` does; nothing is created when
/// this fails.
pub(super) fn request(request: &DownloadRequest) -> Result<(), ErrorInfo> {
    ferry_engine::parse_url(&request.url).map_err(|e| error_info(&e))?;
    if let Some(dest) = &request.destination {
        path("destination", dest)?;
    }
    if let Some(dir) = &request.directory {
        path("directory", dir)?;
        if request.destination.is_some() {
            return Err(invalid(
                "destination and directory exclude each other: give one of them",
            ));
        }
    }
    if let Some(checksum) = &request.checksum {
        checksum
            .parse::<ferry_engine::Checksum>()
            .map_err(invalid)?;
    }
    if request.connections.is_some_and(|c| !(1..=64).contains(&c)) {
        return Err(invalid("connections must be between 1 and 64"));
    }
    shared_options(
        request.tag.as_deref(),
        request.group.as_deref(),
        &request.headers,
    )
}

/// Checks an upload request as the daemon's `create_upload` does — the source files too:
/// each must exist, be a regular file and open, so a bad upload is refused before it is
/// queued — and returns what to send in the engine's terms.
pub(super) fn upload(request: &UploadRequest) -> Result<Upload, ErrorInfo> {
    ferry_engine::parse_url(&request.url).map_err(|e| error_info(&e))?;
    for file in request.body.paths() {
        path("upload file", file)?;
    }
    shared_options(
        request.tag.as_deref(),
        request.group.as_deref(),
        &request.headers,
    )?;
    let body = match &request.body {
        UploadBody::File { path } => ferry_engine::UploadBody::File(path.into()),
        UploadBody::Multipart { fields, files } => {
            if fields.is_empty() && files.is_empty() {
                return Err(invalid(
                    "a multipart upload needs at least one field or file",
                ));
            }
            ferry_engine::UploadBody::Multipart {
                fields: fields
                    .iter()
                    .map(|f| (f.name.clone(), f.value.clone()))
                    .collect(),
                files: files
                    .iter()
                    .map(|f| ferry_engine::MultipartFile {
                        field: f.name.clone(),
                        path: f.path.clone().into(),
                        file_name: f.file_name.clone(),
                        content_type: f.content_type.clone(),
                    })
                    .collect(),
            }
        }
    };
    let sources = body.check().map_err(|e| error_info(&e))?;
    let method = match request.effective_method() {
        UploadMethod::Put => ferry_engine::UploadMethod::Put,
        UploadMethod::Post => ferry_engine::UploadMethod::Post,
    };
    Ok(Upload {
        method,
        body,
        sources,
    })
}

/// What every kind of task may carry: a tag, a group, headers.
fn shared_options(
    tag: Option<&str>,
    group: Option<&str>,
    headers: &Headers,
) -> Result<(), ErrorInfo> {
    if tag.is_some_and(|t| t.len() > MAX_TAG_BYTES) {
        return Err(invalid(format!(
            "the tag is longer than {MAX_TAG_BYTES} bytes"
        )));
    }
    if let Some(group) = group {
        self::group(group)?;
    }
    self::headers(headers.0.iter())?;
    Ok(())
}

/// A `destination`, `directory` or upload file: an absolute path without NUL bytes.
fn path(what: &str, path: &str) -> Result<(), ErrorInfo> {
    if !Path::new(path).is_absolute() {
        return Err(invalid(format!("{what} {path:?} must be an absolute path")));
    }
    if path.contains('\0') {
        return Err(invalid(format!("{what} {path:?} contains a NUL byte")));
    }
    Ok(())
}

/// Group names: 1–256 bytes without control characters.
pub(super) fn group(group: &str) -> Result<(), ErrorInfo> {
    if (1..=256).contains(&group.len()) && !group.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(invalid(format!(
            "group name {group:?} must be 1 to 256 bytes without control characters"
        )))
    }
}

/// Session ids name folders in the daemon; an in-process session follows the same rule so
/// the id means the same thing everywhere.
pub(super) fn session_id(session: &str) -> Result<(), ErrorInfo> {
    let valid = (1..=128).contains(&session.len())
        && !session.starts_with('.')
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(invalid(format!(
            "session id {session:?} must be 1 to 128 letters, digits, '.', '_' or '-', \
             not starting with '.'"
        )))
    }
}

/// Header pairs as a map; a bad name or value is an `invalid_request`.
pub(super) fn headers<'a>(
    pairs: impl Iterator<Item = &'a (String, String)>,
) -> Result<HeaderMap, ErrorInfo> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("bad header name {name:?}")))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| invalid(format!("bad value for header {name}")))?;
        map.append(n, v);
    }
    Ok(map)
}

/// The headers a session sends with every request: its `headers`, and its `user_agent`
/// unless they name one (as the daemon builds them).
pub(super) fn session_headers(config: &ferry_proto::SessionConfig) -> Result<HeaderMap, ErrorInfo> {
    let mut map = headers(config.headers.0.iter())?;
    if let Some(agent) = &config.user_agent {
        ferry_engine::add_user_agent(&mut map, agent).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(map)
}

/// The engine's client for a session: `client` with the session's TLS files (read now).
pub(super) fn session_client(
    config: &ferry_proto::SessionConfig,
    client: &ferry_engine::ClientConfig,
) -> Result<ferry_engine::ClientConfig, ErrorInfo> {
    let tls = &config.tls;
    let identity = tls.client_identity.as_deref().map(Path::new);
    let files = ferry_engine::TlsFiles::read(&tls.extra_roots, identity)
        .map_err(|e| invalid(format!("tls: {}", error_info(&e).message)))?;
    Ok(files.apply(client))
}

/// The wire form of an engine error, with its cause chain (as the daemon reports it).
pub(super) fn error_info(error: &ferry_engine::Error) -> ErrorInfo {
    ErrorInfo {
        code: error.kind().code().to_owned(),
        // Output and logs never quote a password written into a URL (SPEC §14).
        message: ferry_proto::hide_url_passwords(&ferry_engine::display_chain(error)).into_owned(),
        transient: error.is_transient(),
        status: error.status(),
    }
}

pub(super) fn invalid(message: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new("invalid_request", message)
}

pub(super) fn unknown_task(task: TaskId) -> ErrorInfo {
    ErrorInfo::new("unknown_task", format!("there is no task {task}"))
}

/// The daemon's answer to a control request that does not fit the task's state.
pub(super) fn invalid_state(verb: &str, task: TaskId, state: TaskState) -> ErrorInfo {
    ErrorInfo::new(
        "invalid_state",
        format!("cannot {verb} task {task}: it is {}", state.name()),
    )
}
