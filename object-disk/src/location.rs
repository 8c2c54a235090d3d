//! Where an object disk lives: `s3://bucket/prefix`, checked when parsed so that a
//! malformed location is refused with its reason before anything is asked of a store.

use std::fmt;
use std::str::FromStr;

use object_store::path::Path as ObjectPath;

/// A bucket and a key prefix inside it (possibly empty). Invariant: the bucket is a
/// valid S3 bucket name and the prefix is a `/`-joined list of non-empty segments
/// without `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    pub prefix: String,
}

/// Why a location was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocationError(pub String);

impl fmt::Display for LocationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LocationError {}

impl Location {
    /// The key of `leaf` in `namespace` under this location; with an empty `leaf`, the
    /// namespace's own prefix.
    pub fn key(&self, namespace: &str, leaf: &str) -> ObjectPath {
        let joined =
            [self.prefix.as_str(), namespace, leaf].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>();
        ObjectPath::from(joined.join("/"))
    }
}

impl FromStr for Location {
    type Err = LocationError;

    fn from_str(text: &str) -> Result<Location, LocationError> {
        let refuse = |why: &str| LocationError(format!("'{text}' is not an object store location: {why}"));
        let rest = text.strip_prefix("s3://").ok_or_else(|| refuse("it must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && bucket.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && bucket.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
        if !bucket_ok {
            return Err(refuse(
                "the bucket name must be 3 to 63 lowercase letters, digits, dots or hyphens, starting and ending \
                 with a letter or digit",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        let segments: Vec<&str> = if prefix.is_empty() { Vec::new() } else { prefix.split('/').collect() };
        if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
            return Err(refuse("the prefix must not hold empty, '.' or '..' segments"));
        }
        if segments.iter().any(|s| s.chars().any(|c| c.is_control() || c == '*' || c == '\\')) {
            return Err(refuse("the prefix must not hold control characters, '*' or '\\'"));
        }
        Ok(Location { bucket: bucket.to_string(), prefix: segments.join("/") })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix.is_empty() {
            true => write!(f, "s3://{}", self.bucket),
            false => write!(f, "s3://{}/{}", self.bucket, self.prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_is_a_bucket_and_a_prefix() {
        let location: Location = "s3://pool-1/disks/a/".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(location, Location { bucket: "pool-1".into(), prefix: "disks/a".into() });
        assert_eq!(location.to_string(), "s3://pool-1/disks/a");
        assert_eq!(location.key("fragment", "00000000000000ff.03").as_ref(), "disks/a/fragment/00000000000000ff.03");
        assert_eq!(location.key("journal", "").as_ref(), "disks/a/journal");
        let bare: Location = "s3://pool-1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bare.key("label", "label").as_ref(), "label/label");
        assert_eq!(bare.to_string(), "s3://pool-1");
    }

    #[test]
    fn malformed_locations_are_refused_with_their_reason() {
        for (text, why) in [
            ("/srv/disk1", "must start with s3://"),
            ("s3://", "bucket name"),
            ("s3://Upper/x", "bucket name"),
            ("s3://ab/x", "bucket name"),
            ("s3://-pool/x", "bucket name"),
            ("s3://pool//x", "empty"),
            ("s3://pool/../x", "'..'"),
            ("s3://pool/a*b", "'*'"),
        ] {
            let error = text.parse::<Location>().err().unwrap_or_else(|| panic!("{text} was accepted"));
            assert!(error.0.contains(why), "{text}: {error}");
        }
    }
}
