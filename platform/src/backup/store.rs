//! The backups' object store: an S3 client built from `[backends.s3]`, a streaming
//! multipart writer with a bounded memory footprint, read-back verification and the
//! clean-up of what an interrupted backup left behind.
//!
//! Only the platform holds this key pair (docs/security.md, "Backups"): sites never see it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use aws_sdk_s3::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation, StalledStreamProtectionConfig, timeout::TimeoutConfig,
    },
    error::DisplayErrorContext,
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier},
};
use backends::config::S3Config;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::{Hooks, Progress};

/// S3's smallest part (every part but the last must be at least this big).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// The bucket and a client for it.
#[derive(Clone)]
pub struct BackupStore {
    client: Client,
    bucket: String,
    /// Bytes per multipart part: memory per object is at most
    /// `part_size × (MAX_PARTS_IN_FLIGHT + 1)`.
    part_size: usize,
}

/// Parts uploaded at once per object (the producer waits when all are in flight).
const MAX_PARTS_IN_FLIGHT: usize = 2;

/// How long the S3 client waits, so that a stalled server fails a request (which the SDK
/// retries, up to its 3 attempts) instead of holding a backup forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a connection (TCP and TLS).
    pub connect: Duration,
    /// From sending a request to the first byte of its answer: a whole part's upload
    /// ([`BackupStore::part_size`], 8 MiB by default) must fit, i.e. at least about
    /// 140 KiB/s at 60 s.
    pub read: Duration,
    /// One attempt of one request, answer included (each retry has its own).
    pub attempt: Duration,
    /// A body (an upload's or a download's) that moves less than 1 byte/s for this long
    /// fails: the SDK's stalled-stream protection, which covers the streamed object
    /// bodies a restore reads and that no timeout above bounds.
    pub stalled_stream_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(60),
            attempt: Duration::from_secs(120),
            stalled_stream_grace: Duration::from_secs(20),
        }
    }
}

impl Timeouts {
    fn sdk(self) -> (TimeoutConfig, StalledStreamProtectionConfig) {
        (
            TimeoutConfig::builder()
                .connect_timeout(self.connect)
                .read_timeout(self.read)
                .operation_attempt_timeout(self.attempt)
                .build(),
            StalledStreamProtectionConfig::enabled()
                .grace_period(self.stalled_stream_grace)
                .build(),
        )
    }
}

fn sdk_error<E: std::error::Error + 'static>(what: &str, err: E) -> anyhow::Error {
    anyhow!("{what}: {}", DisplayErrorContext(err))
}

impl std::fmt::Debug for BackupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupStore")
            .field("bucket", &self.bucket)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl BackupStore {
    /// A client for `config`'s endpoint. Checksums are computed and validated only where
    /// S3 requires them: newer SDKs otherwise send CRC32 trailers in `aws-chunked` bodies,
    /// which S3-compatible servers (the lab's s3s-fs among them) do not all take. Each
    /// object's integrity is checked by our own SHA-256, read back after the upload.
    ///
    /// Every request is bounded by [`Timeouts::default`] (connect 10 s, first byte of the
    /// answer 60 s, one attempt 120 s, a body stalled for 20 s): see [`Self::with_timeouts`].
    pub fn new(config: &S3Config) -> anyhow::Result<Self> {
        if !(config.endpoint.starts_with("http://") || config.endpoint.starts_with("https://")) {
            bail!("backends.s3.endpoint must be an http:// or https:// URL");
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .endpoint_url(config.endpoint.trim_end_matches('/'))
            .credentials_provider(Credentials::new(
                config.access_key.clone(),
                config.secret_key.expose().to_owned(),
                None,
                None,
                "pressdock-config",
            ))
            .force_path_style(config.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .http_client(http)
            .timeout_config(Timeouts::default().sdk().0)
            .stalled_stream_protection(Timeouts::default().sdk().1)
            .build();
        Ok(Self {
            client: Client::from_conf(conf),
            bucket: config.bucket.clone(),
            part_size: 8 * 1024 * 1024,
        })
    }

    /// The same store with other timeouts (tests use short ones).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        let (timeout, stalled) = timeouts.sdk();
        let conf = self
            .client
            .config()
            .to_builder()
            .timeout_config(timeout)
            .stalled_stream_protection(stalled)
            .build();
        self.client = Client::from_conf(conf);
        self
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> Option<TimeoutConfig> {
        self.client.config().timeout_config().cloned()
    }

    /// Sets the part size (at least [`MIN_PART_SIZE`]).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(MIN_PART_SIZE);
        self
    }

    pub fn part_size(&self) -> usize {
        self.part_size
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Starts a multipart upload of `key`; `uploads` records it until it completes, so a
    /// failed backup can abort it.
    pub(crate) async fn create(
        &self,
        key: String,
        uploads: &OpenUploads,
        hooks: &Hooks,
    ) -> anyhow::Result<MultipartWriter> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/zstd")
            .send()
            .await
            .map_err(|e| sdk_error("starting a multipart upload", e))?;
        let upload_id = out
            .upload_id()
            .context("the S3 server returned no upload id")?
            .to_owned();
        uploads.add(&key, &upload_id);
        // Journaled before any part is sent: a runner killed after this point leaves an
        // upload its successor can find and abort; one killed before it has stored nothing.
        if let Some(journal) = &hooks.journal {
            journal(key.clone(), upload_id.clone())
                .await
                .context("journaling the upload")?;
        }
        let progress = hooks.progress.clone();
        Ok(MultipartWriter {
            store: self.clone(),
            key,
            upload_id,
            buf: Vec::with_capacity(self.part_size),
            next_part: 1,
            in_flight: JoinSet::new(),
            parts: Vec::new(),
            hasher: Sha256::new(),
            size: 0,
            uploads: uploads.clone(),
            progress,
        })
    }

    /// Writes a small object in one request (the manifest).
    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> anyhow::Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk_error("writing an object", e))?;
        Ok(())
    }

    /// Reads `key` whole (small objects only: the manifest).
    pub async fn get(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error("reading an object", e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| sdk_error("reading an object's body", e))?;
        Ok(body.into_bytes().to_vec())
    }

    /// Streams `key` back and returns its size and SHA-256 (hex), in bounded memory.
    pub async fn digest(&self, key: &str) -> anyhow::Result<(u64, String)> {
        let mut out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error("reading an object back", e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = out
            .body
            .try_next()
            .await
            .map_err(|e| sdk_error("reading an object back", e))?
        {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// Keys and sizes under `prefix`.
    pub async fn list(&self, prefix: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| sdk_error("listing objects", e))?;
            for o in out.contents() {
                if let Some(key) = o.key() {
                    found.push((
                        key.to_owned(),
                        o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    ));
                }
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(found)
    }

    /// Aborts one multipart upload; one that is already gone is success. S3 answers
    /// `NoSuchUpload` for an upload that is gone; some compatible servers (s3s-fs) answer
    /// `AccessDenied` instead, so that answer counts as gone when the upload has no part
    /// left either (a `ListParts` that fails or lists none).
    pub async fn abort(&self, key: &str, upload_id: &str) -> anyhow::Result<()> {
        let err = match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        if err
            .as_service_error()
            .is_some_and(|e| e.is_no_such_upload())
        {
            return Ok(());
        }
        if err.as_service_error().and_then(|e| e.meta().code()) == Some("AccessDenied")
            && self.parts(key, upload_id).await.unwrap_or(0) == 0
        {
            return Ok(());
        }
        Err(sdk_error("aborting a multipart upload", err))
    }

    /// Parts stored so far for an unfinished upload.
    pub async fn parts(&self, key: &str, upload_id: &str) -> anyhow::Result<usize> {
        let out = self
            .client
            .list_parts()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| sdk_error("listing parts", e))?;
        Ok(out.parts().len())
    }

    /// Removes everything a backup under `prefix` left: the unfinished multipart
    /// `uploads` it journaled (aborted) and its objects (deleted). Idempotent; what a
    /// restarted platform runs for a backup that was interrupted, and what a failed backup
    /// runs before it is `failed`. (Uploads are found from the journal, not by listing:
    /// `ListMultipartUploads` is not implemented by every S3 server, s3s-fs among them.)
    pub async fn remove_prefix(
        &self,
        prefix: &str,
        uploads: &[(String, String)],
    ) -> anyhow::Result<()> {
        if !prefix.ends_with('/') || prefix.len() < 2 {
            bail!("refusing to remove a prefix that is not a backup's folder");
        }
        for (key, upload) in uploads {
            if !key.starts_with(prefix) {
                bail!("upload {key} is not under {prefix}");
            }
            self.abort(key, upload).await?;
        }
        let keys = self.list(prefix).await?;
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|(key, _)| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow!("building a delete request: {e}"))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| anyhow!("building a delete request: {e}"))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| sdk_error("deleting objects", e))?;
            if let Some(err) = out.errors().first() {
                bail!(
                    "deleting {}: {}",
                    err.key().unwrap_or("an object"),
                    err.code().unwrap_or("error")
                );
            }
        }
        Ok(())
    }
}

/// Multipart uploads a backup started and has not completed yet.
#[derive(Clone, Default)]
pub(crate) struct OpenUploads(Arc<Mutex<Vec<(String, String)>>>);

impl OpenUploads {
    fn add(&self, key: &str, upload_id: &str) {
        if let Ok(mut open) = self.0.lock() {
            open.push((key.to_owned(), upload_id.to_owned()));
        }
    }

    fn remove(&self, upload_id: &str) {
        if let Ok(mut open) = self.0.lock() {
            open.retain(|(_, id)| id != upload_id);
        }
    }

    pub(crate) fn take(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .map(|mut open| std::mem::take(&mut *open))
            .unwrap_or_default()
    }
}

/// What an object turned out to be once written.
#[derive(Debug, Clone)]
pub struct WrittenObject {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub parts: u32,
}

/// One object being written as a multipart upload: bytes are buffered up to a part, and
/// up to [`MAX_PARTS_IN_FLIGHT`] parts upload while the producer fills the next one.
pub(crate) struct MultipartWriter {
    store: BackupStore,
    key: String,
    upload_id: String,
    buf: Vec<u8>,
    next_part: i32,
    in_flight: JoinSet<anyhow::Result<CompletedPart>>,
    parts: Vec<CompletedPart>,
    hasher: Sha256,
    size: u64,
    uploads: OpenUploads,
    progress: Option<Progress>,
}

impl MultipartWriter {
    pub(crate) async fn write(&mut self, mut data: &[u8]) -> anyhow::Result<()> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = self.store.part_size - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() >= self.store.part_size {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> anyhow::Result<()> {
        while self.in_flight.len() >= MAX_PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let body = std::mem::replace(&mut self.buf, Vec::with_capacity(self.store.part_size));
        let number = self.next_part;
        self.next_part += 1;
        let store = self.store.clone();
        let key = self.key.clone();
        let upload_id = self.upload_id.clone();
        self.in_flight.spawn(async move {
            let out = store
                .client
                .upload_part()
                .bucket(&store.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| sdk_error("uploading a part", e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build())
        });
        Ok(())
    }

    async fn join_one(&mut self) -> anyhow::Result<()> {
        if let Some(done) = self.in_flight.join_next().await {
            let part = done.map_err(|e| anyhow!("a part upload task ended: {e}"))??;
            if let Some(progress) = &self.progress {
                progress.send(super::Event::PartUploaded {
                    key: self.key.clone(),
                    part: part.part_number().unwrap_or(0),
                });
            }
            self.parts.push(part);
        }
        Ok(())
    }

    /// Sends the last part and waits for every part.
    async fn upload_rest(&mut self) -> anyhow::Result<()> {
        // An empty object still needs one (empty) part; otherwise the rest of the buffer.
        if !self.buf.is_empty() || self.next_part == 1 {
            self.send_part().await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }

    /// Waits for every part upload still running, whatever its result: after a failure,
    /// so that no part lands after the upload was aborted (a dropped task's request may
    /// still reach the server and leave an orphan part behind).
    pub(crate) async fn settle(&mut self) {
        while self.in_flight.join_next().await.is_some() {}
    }

    /// Uploads the last part and completes the upload.
    pub(crate) async fn finish(mut self) -> anyhow::Result<WrittenObject> {
        if let Err(err) = self.upload_rest().await {
            self.settle().await;
            return Err(err);
        }
        self.parts.sort_by_key(|p| p.part_number());
        let count = self.parts.len();
        self.store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("completing a multipart upload", e))?;
        self.uploads.remove(&self.upload_id);
        Ok(WrittenObject {
            key: self.key,
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
            parts: u32::try_from(count).unwrap_or(u32::MAX),
        })
    }
}

/// A multipart object written through zstd: raw bytes in, compressed bytes out to S3.
///
/// zstd runs on a thread of its own, fed through a bounded channel: at level 3 it takes
/// about a core for a database read at full speed, and on the async task that also
/// drives the dump, the archive and the part uploads it held them up (and the database
/// and wp-content streams, joined on one task, took turns on one core). The caller's task
/// hands raw chunks over and writes what comes back compressed to the object. Memory:
/// [`QUEUED`] raw and as many compressed chunks in the channels (about 1 MiB each) on top
/// of the object writer's parts.
pub(crate) struct CompressedWriter {
    input: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    output: tokio::sync::mpsc::Receiver<Vec<u8>>,
    compressor: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    object: MultipartWriter,
    raw: u64,
}

/// Compressed bytes handed to the object writer at a time.
const FLUSH_AT: usize = 1024 * 1024;
/// Raw chunks queued for the compressor, and compressed ones queued for the object.
const QUEUED: usize = 4;

impl CompressedWriter {
    pub(crate) fn new(object: MultipartWriter, level: i32) -> anyhow::Result<Self> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::with_capacity(FLUSH_AT), level)
            .context("starting zstd")?;
        // zstd's own checksum of the content: a truncated or altered object is refused
        // when it is decompressed (restore), besides our SHA-256 of the object.
        encoder.include_checksum(true).context("zstd checksum")?;
        let (input, mut raw_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUED);
        let (out_tx, output) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUED);
        let compressor = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            while let Some(chunk) = raw_rx.blocking_recv() {
                encoder.write_all(&chunk).context("compressing")?;
                if encoder.get_ref().len() >= FLUSH_AT {
                    let out = std::mem::replace(encoder.get_mut(), Vec::with_capacity(FLUSH_AT));
                    if out_tx.blocking_send(out).is_err() {
                        // The writer stopped (a failure elsewhere): nothing more to do.
                        return Ok(());
                    }
                }
            }
            // The input ended: the frame's end (only [`CompressedWriter::finish`] uses it).
            let out = encoder.finish().context("compressing")?;
            let _ = out_tx.blocking_send(out);
            Ok(())
        });
        Ok(Self {
            input: Some(input),
            output,
            compressor: Some(compressor),
            object,
            raw: 0,
        })
    }

    pub(crate) async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.raw += data.len() as u64;
        let Some(input) = self.input.clone() else {
            bail!("the compressor is closed");
        };
        let mut chunk = Some(data.to_vec());
        while chunk.is_some() {
            // Whatever comes out compressed is written while the input waits for room.
            tokio::select! {
                biased;
                out = self.output.recv() => match out {
                    Some(out) => self.object.write(&out).await?,
                    None => return Err(self.compressor_error().await),
                },
                permit = input.reserve() => match permit {
                    Ok(permit) => {
                        if let Some(c) = chunk.take() {
                            permit.send(c);
                        }
                    }
                    Err(_) => return Err(self.compressor_error().await),
                },
            }
        }
        Ok(())
    }

    /// Why the compressor stopped before its input ended.
    async fn compressor_error(&mut self) -> anyhow::Error {
        match self.compressor.take() {
            Some(handle) => match handle.await {
                Ok(Err(err)) => err,
                Ok(Ok(())) => anyhow!("the compressor stopped early"),
                Err(e) => anyhow!("the compressor thread ended: {e}"),
            },
            None => anyhow!("the compressor stopped early"),
        }
    }

    /// Stops the compressor and waits for the part uploads still running (after a
    /// failure; see [`MultipartWriter::settle`]). The upload is not completed.
    pub(crate) async fn settle(&mut self) {
        self.input = None;
        while self.output.recv().await.is_some() {}
        if let Some(handle) = self.compressor.take() {
            let _ = handle.await;
        }
        self.object.settle().await;
    }

    /// Ends the zstd frame and the upload; returns the object and the uncompressed size.
    pub(crate) async fn finish(mut self) -> anyhow::Result<(WrittenObject, u64)> {
        self.input = None;
        let mut written = Ok(());
        while let Some(out) = self.output.recv().await {
            if written.is_ok() {
                written = self.object.write(&out).await;
            }
        }
        let compressed = match self.compressor.take() {
            Some(handle) => handle
                .await
                .map_err(|e| anyhow!("the compressor thread ended: {e}"))
                .and_then(|r| r),
            None => Err(anyhow!("the compressor stopped early")),
        };
        if let Err(err) = written.and(compressed) {
            self.object.settle().await;
            return Err(err);
        }
        Ok((self.object.finish().await?, self.raw))
    }
}
