//! The state machine of one upload: attempts, retries, redirects, the reply.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::{StreamExt, TryStreamExt};
use http::HeaderMap;
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::body::{self, BoxError, ErrorSlot, Sources};
use super::{ServerReply, UploadBody, UploadFailure, UploadSpec, Uploaded, invalid};
use crate::download::request::classify;
use crate::download::{Event, Observer, Redirect, past_end, redirect_target, resource_deadline};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::retry::{RetryLater, parse_retry_after};

pub(super) struct Upload<'a> {
    client: &'a reqwest::Client,
    spec: &'a UploadSpec,
    url: Url,
    progress: &'a Progress,
    observer: &'a dyn Observer,
    /// The files' identities, recorded by the first attempt.
    sources: Option<Sources>,
    redirects: Vec<Redirect>,
    /// The last attempt's complete reply, if it got one.
    reply: Option<ServerReply>,
    /// The next request sends the body again after a failed attempt (of this run or one
    /// before it): announced once its length is known.
    restarting: AtomicBool,
}

/// A request ready to send: its head, and its body as a stream to pump.
struct Prepared {
    request: reqwest::Request,
    source: futures_util::stream::BoxStream<'static, Result<Bytes, BoxError>>,
    length: u64,
}

impl<'a> Upload<'a> {
    pub(super) fn new(
        client: &'a reqwest::Client,
        spec: &'a UploadSpec,
        url: Url,
        progress: &'a Progress,
        observer: &'a dyn Observer,
    ) -> Upload<'a> {
        Upload {
            client,
            spec,
            url,
            progress,
            observer,
            sources: None,
            redirects: Vec::new(),
            reply: None,
            restarting: AtomicBool::new(spec.failed_attempts > 0),
        }
    }

    pub(super) async fn run(
        mut self,
        cancel: &CancellationToken,
    ) -> Result<Uploaded, UploadFailure> {
        let expired = resource_deadline(self.spec.resource_timeout);
        tokio::pin!(expired);
        let timed_out = || {
            Error::from(ErrorKind::TimedOut(
                self.spec.resource_timeout.unwrap_or_default(),
            ))
        };
        let ends_at = self.spec.resource_timeout.map(|t| Instant::now() + t);
        let mut failed_attempts = self.spec.failed_attempts;
        loop {
            let outcome = tokio::select! {
                biased;
                () = cancel.cancelled() => Err(ErrorKind::Cancelled.into()),
                () = &mut expired => Err(timed_out()),
                r = self.attempt() => r,
            };
            let error = match outcome {
                Ok(done) => return Ok(done),
                Err(e) => e,
            };
            // Every attempt starts from zero, so none counts as progress.
            failed_attempts += 1;
            let Some(delay) = self.spec.retry.after_failure(failed_attempts, &error) else {
                return Err(self.fail(error).await);
            };
            if self.spec.hand_back_retries && past_end(delay, ends_at) {
                // The next attempt would come after the resource timeout.
                return Err(self.fail(timed_out()).await);
            }
            tracing::info!(error = %error, attempt = failed_attempts, ?delay, "retrying upload");
            self.observer.on_event(Event::Retrying {
                attempt: failed_attempts,
                delay,
                error: &error,
            });
            if self.spec.hand_back_retries {
                let mut failure = self.fail(error).await;
                failure.retry = Some(RetryLater {
                    attempt: failed_attempts,
                    delay,
                });
                return Err(failure);
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(self.fail(ErrorKind::Cancelled.into()).await),
                () = &mut expired => return Err(self.fail(timed_out()).await),
                () = tokio::time::sleep(delay) => {}
            }
            self.restarting.store(true, Ordering::Relaxed);
        }
    }

    /// The failure to return; without a complete reply, the reply file is removed so that
    /// no stale or partial reply is left behind.
    async fn fail(&mut self, error: Error) -> UploadFailure {
        let reply = self.reply.take();
        if reply.is_none() {
            match tokio::fs::remove_file(&self.spec.reply).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(error = %e, path = %self.spec.reply.display(),
                    "could not remove the incomplete reply file"),
            }
        }
        UploadFailure {
            error,
            reply,
            retry: None,
        }
    }

    fn source_paths(&self) -> Vec<&'a Path> {
        match &self.spec.body {
            UploadBody::File(path) => vec![path.as_path()],
            UploadBody::Multipart { files, .. } => files.iter().map(|f| f.path.as_path()).collect(),
        }
    }

    /// One attempt: check the files, send (following 307/308), save the reply.
    async fn attempt(&mut self) -> Result<Uploaded, Error> {
        self.reply = None;
        match &self.sources {
            None => {
                let expected = self.spec.sources.as_deref();
                self.sources = Some(Sources::record(&self.source_paths(), expected).await?);
            }
            Some(sources) => sources.check().await?,
        }
        let mut headers = self.spec.headers.clone();
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        match &self.spec.body {
            UploadBody::File(_) => {
                if !headers.contains_key(header::CONTENT_TYPE) {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                }
            }
            UploadBody::Multipart { .. } => {
                headers.remove(header::CONTENT_TYPE);
            }
        }
        let mut current = self.url.clone();
        let mut visited = vec![current.clone()];
        loop {
            let (response, sent) = self.send(&current, &headers).await?;
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok());
            if let (307 | 308, Some(location)) = (status, location) {
                let next = redirect_target(
                    &current,
                    location,
                    &visited,
                    self.spec.allow_insecure_redirects,
                    &mut headers,
                )?;
                let redirect = Redirect {
                    from: current.clone(),
                    to: next.clone(),
                    status,
                };
                if !self.redirects.contains(&redirect) {
                    self.observer.on_event(Event::Redirected {
                        from: &redirect.from,
                        to: &redirect.to,
                        status,
                    });
                    self.redirects.push(redirect);
                }
                visited.push(next.clone());
                current = next;
                continue;
            }
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let reply = self.save_reply(response, &current).await?;
            self.reply = Some(reply.clone());
            // The body went out: make sure it was one version of the file(s).
            if let Some(sources) = &self.sources {
                sources.check().await?;
            }
            if !(200..300).contains(&status) {
                return Err(ErrorKind::HttpStatus {
                    code: status,
                    retry_after,
                }
                .into());
            }
            self.reply = None;
            return Ok(Uploaded {
                status,
                headers: reply.headers,
                reply: reply.path,
                reply_bytes: reply.bytes,
                sent,
                final_url: current,
                redirects: self.redirects.clone(),
            });
        }
    }

    /// Opens the files (checking they are the recorded versions) and builds the request.
    async fn prepare(
        &self,
        url: &Url,
        headers: &HeaderMap,
        slot: &ErrorSlot,
    ) -> Result<Prepared, Error> {
        let Some(sources) = &self.sources else {
            return Err(invalid("the source files were not recorded".into()));
        };
        let builder = self
            .client
            .request(self.spec.method.as_reqwest(), url.clone())
            .headers(headers.clone());
        let build_error = |e: reqwest::Error| {
            Error::with_source(
                ErrorKind::InvalidUpload("cannot build the request".into()),
                e,
            )
        };
        match &self.spec.body {
            UploadBody::File(path) => {
                let file = sources.open(0).await?;
                let recorded = sources.identity(0)?;
                let len = recorded.len;
                let source = body::file_stream(file, path.clone(), recorded, slot.clone())
                    .map_err(BoxError::from)
                    .boxed();
                let request = builder
                    .header(header::CONTENT_LENGTH, len)
                    .build()
                    .map_err(build_error)?;
                Ok(Prepared {
                    request,
                    source,
                    length: len,
                })
            }
            UploadBody::Multipart { fields, files } => {
                let mut opened = Vec::with_capacity(files.len());
                for (index, file) in files.iter().enumerate() {
                    opened.push((file, sources.open(index).await?, sources.identity(index)?));
                }
                let form = body::form(fields, opened, slot)?;
                let mut request = builder.multipart(form).build().map_err(build_error)?;
                let length = request
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| invalid("the multipart body has no computable length".into()))?;
                let source = match request.body_mut().take() {
                    Some(form_body) => form_body.into_data_stream().map_err(BoxError::from).boxed(),
                    None => futures_util::stream::empty().boxed(),
                };
                Ok(Prepared {
                    request,
                    source,
                    length,
                })
            }
        }
    }

    /// Sends one request with a fresh body and waits for the response head. Returns it with
    /// the body bytes handed to the connection.
    async fn send(
        &self,
        url: &Url,
        headers: &HeaderMap,
    ) -> Result<(reqwest::Response, u64), Error> {
        let slot = ErrorSlot::default();
        let Prepared {
            mut request,
            source,
            length,
        } = self.prepare(url, headers, &slot).await?;
        let (tx, rx) = mpsc::channel(2);
        *request.body_mut() = Some(body::channel_body(rx));
        self.progress.reset(0, Some(length));
        if self.restarting.swap(false, Ordering::Relaxed) {
            // The body goes from byte zero again: say so, as a download that restarts does.
            self.observer.on_event(Event::ResumedAtOffset {
                offset: 0,
                expected: Some(length),
            });
        }

        let timeout = self.spec.request_timeout;
        let pump = body::pump(source, tx, &self.spec.limits, self.progress, timeout, &slot);
        let send = self.client.execute(request);
        tokio::pin!(pump, send);
        let mut pumped = false;
        let head_deadline = tokio::time::sleep(timeout);
        tokio::pin!(head_deadline);
        let response = loop {
            tokio::select! {
                r = &mut send => break r,
                p = &mut pump, if !pumped => {
                    p?;
                    pumped = true;
                    // The whole body is out: the head is due within the request timeout.
                    head_deadline.as_mut().reset(Instant::now() + timeout);
                }
                () = &mut head_deadline, if pumped => {
                    return Err(ErrorKind::RequestTimeout(timeout).into());
                }
            }
        };
        let response = match response {
            Ok(response) => response,
            // A failing source makes the request fail too: report the source's error.
            Err(e) => return Err(slot.take().unwrap_or_else(|| classify(e, url))),
        };
        Ok((response, self.progress.received()))
    }

    /// Writes the response body to the reply file, within the size limit.
    async fn save_reply(
        &self,
        mut response: reqwest::Response,
        url: &Url,
    ) -> Result<ServerReply, Error> {
        let status = response.status().as_u16();
        let headers = crate::download::header_pairs(response.headers());
        let path = &self.spec.reply;
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| Error::io("create", path, e))?;
        let timeout = self.spec.request_timeout;
        let limit = self.spec.max_reply_bytes;
        let mut bytes = 0u64;
        loop {
            let chunk = tokio::time::timeout(timeout, response.chunk())
                .await
                .map_err(|_| Error::from(ErrorKind::RequestTimeout(timeout)))?
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Interrupted {
                            host: url.host_str().unwrap_or("").to_owned(),
                        },
                        e,
                    )
                })?;
            let Some(chunk) = chunk else { break };
            bytes += chunk.len() as u64;
            if bytes > limit {
                return Err(ErrorKind::ReplyTooLarge { limit }.into());
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::io("write to", path, e))?;
        }
        file.flush()
            .await
            .map_err(|e| Error::io("write to", path, e))?;
        file.sync_data()
            .await
            .map_err(|e| Error::io("sync", path, e))?;
        Ok(ServerReply {
            status,
            headers,
            path: path.clone(),
            bytes,
        })
    }
}
