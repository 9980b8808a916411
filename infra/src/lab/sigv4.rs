//! AWS Signature Version 4 for the lab's own S3 requests (creating the bucket, checking that
//! the server refuses what is not signed): the lab's S3 server answers signed requests only.
//! Header signing with a hashed payload, the form every SDK uses; path-style, ASCII paths.
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// A key pair and the region it signs for.
pub struct Credentials<'a> {
    pub access_key: &'a str,
    pub secret_key: &'a str,
    pub region: &'a str,
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut m = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` of a time (UTC), from the civil calendar of the Unix day count.
pub fn amz_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to (year, month, day): the era-based algorithm on March years.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The headers that sign `method host path?query` with `payload`: `x-amz-date`,
/// `x-amz-content-sha256` and `Authorization`. `host` is the Host header as sent
/// (`ip:port`); `path` and `query` are given in canonical form (`path` with no character
/// to escape, `query` sorted by name, `name=value` joined by `&`, or empty).
pub fn sign(
    c: &Credentials<'_>,
    method: &str,
    host: &str,
    path: &str,
    query: &str,
    payload: &[u8],
    now: SystemTime,
) -> Vec<(String, String)> {
    let date_time = amz_date(now);
    let date = &date_time[..8];
    let payload_hash = hex::encode(Sha256::digest(payload));
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "{method}\n{path}\n{query}\nhost:{host}\nx-amz-content-sha256:{payload_hash}\n\
         x-amz-date:{date_time}\n\n{signed_headers}\n{payload_hash}"
    );
    let scope = format!("{date}/{}/s3/aws4_request", c.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{}", c.secret_key).as_bytes(), date);
    for part in [c.region, "s3", "aws4_request"] {
        key = hmac(&key, part);
    }
    let signature = hex::encode(hmac(&key, &to_sign));
    vec![
        ("x-amz-date".into(), date_time.clone()),
        ("x-amz-content-sha256".into(), payload_hash),
        (
            "Authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
                 Signature={signature}",
                c.access_key
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        // 2000-02-29 (a leap day of a century year) and 2026-12-06 17:30:05.
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229T000000Z"
        );
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(1_796_578_205)),
            "20261206T173005Z"
        );
    }

    /// Signatures computed by botocore (`S3SigV4Auth`, the AWS CLI's signer) for the same
    /// requests, key and time.
    #[test]
    fn signatures_match_botocore() {
        let c = Credentials {
            access_key: "PDLABEXAMPLEKEY0001",
            secret_key: "secretsecretsecretsecretsecretsecret0001",
            region: "us-east-1",
        };
        let at = UNIX_EPOCH + Duration::from_secs(1_796_578_205);
        let auth = |h: Vec<(String, String)>| {
            h.into_iter()
                .find(|(k, _)| k == "Authorization")
                .map(|(_, v)| v)
                .unwrap_or_default()
        };
        let put = auth(sign(
            &c,
            "PUT",
            "10.213.0.1:23401",
            "/backups/a/b.txt",
            "",
            b"hello",
            at,
        ));
        assert_eq!(
            put,
            "AWS4-HMAC-SHA256 Credential=PDLABEXAMPLEKEY0001/20261206/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
             Signature=3c90943e9402d4c2dfc1fe1ae2beab77842d08343e486055083451c86a9f5a8b"
        );
        let list = auth(sign(
            &c,
            "GET",
            "10.213.0.1:23401",
            "/backups",
            "list-type=2&prefix=t1",
            b"",
            at,
        ));
        assert!(
            list.ends_with("df505eff29b4b6bd13c88b52a8bd3d2afdf328fbc3e7240686af8805b6204704"),
            "{list}"
        );
    }

    /// The signing key of AWS's published example ("Examples of how to derive a signing
    /// key": the example secret, 20120215, us-east-1, iam).
    #[test]
    fn signing_key_matches_the_published_example() {
        let mut key = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215");
        for part in ["us-east-1", "iam", "aws4_request"] {
            key = hmac(&key, part);
        }
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
