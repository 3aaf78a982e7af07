//! `attachments`: presigned S3 URLs for encrypted attachment objects (DESIGN.md, "Attachments").
//!
//! The server never sees an attachment's bytes or key: it hands out a presigned `PUT` for a new
//! random object id, whose signature covers `Content-Length` so that S3 itself holds the upload
//! to the declared size, and a presigned `GET` for an object that exists. Objects live under
//! `attachments/<id>` and expire with the bucket's lifecycle rule.

use std::{collections::BTreeMap, time::Duration};

use aws_sdk_s3::{
    error::SdkError, operation::head_object::HeadObjectError, presigning::PresigningConfig,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use cipherpost_protocol::attachment_object_len;
use rand_core::{OsRng, RngCore};

use crate::{
    api::{AttachmentDownload, AttachmentUpload, CreateAttachmentRequest},
    ApiError, Backend, HttpRequest, HttpResponse,
};

/// Bytes of randomness in an object id.
const ID_LEN: usize = 16;

/// The S3 key of an attachment object.
fn object_key(id: &str) -> String {
    format!("attachments/{id}")
}

/// Checks an object id from a path: exactly 16 bytes as unpadded base64url, in canonical form
/// (so that one object has one spelling).
fn parse_id(id: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_attachment_id",
            "an attachment id is 16 bytes as unpadded base64url (22 characters)",
        )
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(id.as_bytes())
        .map_err(|_| invalid())?;
    if bytes.len() != ID_LEN || URL_SAFE_NO_PAD.encode(&bytes) != id {
        return Err(invalid());
    }
    Ok(id.to_owned())
}

impl Backend {
    /// Routes of the `attachments` function.
    pub async fn attachments(&self, req: &HttpRequest) -> HttpResponse {
        let now = crate::now_ms();
        let result = match (req.method.as_str(), req.segments().as_slice()) {
            ("POST", ["attachments"]) => self.create_attachment(req, now).await,
            ("GET", ["attachments", id]) => self.get_attachment(req, id, now).await,
            _ => Err(req.unmatched(&[("GET", "attachments/{id}")])),
        };
        result.unwrap_or_else(HttpResponse::from)
    }

    fn presigning(&self) -> Result<PresigningConfig, ApiError> {
        PresigningConfig::expires_in(Duration::from_secs(self.config.limits.attachment_url_secs))
            .map_err(|e| ApiError::new(500, "internal", format!("presigning configuration: {e}")))
    }

    async fn create_attachment(
        &self,
        req: &HttpRequest,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let caller = self.authenticate(req, now).await?;
        let body: CreateAttachmentRequest = req.json()?;
        if body.size == 0 {
            return Err(ApiError::bad_request(
                "invalid_size",
                "size is the encrypted object's length in bytes and cannot be 0",
            ));
        }
        let max_plain = self.config.limits.max_attachment_bytes;
        let max_object = attachment_object_len(max_plain).unwrap_or(u64::MAX);
        if body.size > max_object {
            return Err(ApiError::new(
                413,
                "attachment_too_large",
                format!(
                    "the object is {} bytes; at most {max_object} are allowed (a {max_plain}-byte attachment)",
                    body.size
                ),
            ));
        }
        let size = i64::try_from(body.size).map_err(|_| {
            ApiError::bad_request("invalid_size", "size does not fit an object length")
        })?;
        self.rate_limit(super::Limited::Uploads, caller.user.as_str(), now)
            .await?;
        let mut raw = [0u8; ID_LEN];
        OsRng.fill_bytes(&mut raw);
        let id = URL_SAFE_NO_PAD.encode(raw);
        // The signature covers Content-Length (and host): S3 refuses an upload of any other size.
        let presigned = self
            .s3
            .put_object()
            .bucket(&self.config.bucket)
            .key(object_key(&id))
            .content_length(size)
            .presigned(self.presigning()?)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "presigning a PUT failed");
                ApiError::new(500, "internal", "could not make an upload URL")
            })?;
        let mut headers = BTreeMap::new();
        headers.insert("content-length".to_owned(), body.size.to_string());
        for (name, value) in presigned.headers() {
            let name = name.to_ascii_lowercase();
            if name != "host" {
                headers.insert(name, value.to_owned());
            }
        }
        Ok(HttpResponse::ok(
            201,
            &AttachmentUpload {
                id,
                upload_url: presigned.uri().to_owned(),
                expires_in: self.config.limits.attachment_url_secs,
                method: "PUT".to_owned(),
                headers,
            },
        ))
    }

    async fn get_attachment(
        &self,
        req: &HttpRequest,
        id: &str,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let _caller = self.authenticate(req, now).await?;
        let id = parse_id(id)?;
        let key = object_key(&id);
        let head = self
            .s3
            .head_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .send()
            .await;
        let size = match head {
            Ok(head) => head
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            Err(SdkError::ServiceError(e)) if matches!(e.err(), HeadObjectError::NotFound(_)) => {
                return Err(ApiError::not_found(
                    "unknown_attachment",
                    "no attachment with this id (never uploaded, or expired)",
                ));
            }
            // Without s3:ListBucket (the function has none, least privilege) S3 answers a
            // missing key with 403 rather than 404.
            Err(e)
                if e.raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 403 | 404)) =>
            {
                tracing::info!(error = %e, "HeadObject refused: taken as an unknown attachment");
                return Err(ApiError::not_found(
                    "unknown_attachment",
                    "no attachment with this id (never uploaded, or expired)",
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "HeadObject failed");
                return Err(ApiError::unavailable(
                    "the attachment store is unavailable; retry shortly",
                ));
            }
        };
        let presigned = self
            .s3
            .get_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .presigned(self.presigning()?)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "presigning a GET failed");
                ApiError::new(500, "internal", "could not make a download URL")
            })?;
        Ok(HttpResponse::ok(
            200,
            &AttachmentDownload {
                id,
                download_url: presigned.uri().to_owned(),
                expires_in: self.config.limits.attachment_url_secs,
                size,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_canonical_bytes() {
        assert!(parse_id("AAAAAAAAAAAAAAAAAAAAAA").is_ok());
        assert!(parse_id("AAAAAAAAAAAAAAAAAAAAAB").is_err()); // non-canonical trailing bits
        assert!(parse_id("AAAA").is_err());
        assert!(parse_id("AAAAAAAAAAAAAAAAAAAAA=").is_err());
        assert!(parse_id("..%2F").is_err());
    }
}
