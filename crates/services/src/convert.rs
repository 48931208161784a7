//! Conversions between wire types and library types, at the edge.

use std::time::{Duration, UNIX_EPOCH};
use stevedore_api::types::Descriptor as PbDescriptor;
use stevedore_types::{Descriptor, Error};

/// A wire descriptor to a validated library descriptor.
pub fn descriptor_from_pb(d: &PbDescriptor) -> Result<Descriptor, Error> {
    let digest = d
        .digest
        .parse()
        .map_err(|e: Error| e.context("descriptor"))?;
    let mut out = Descriptor::new(d.media_type.clone(), digest, d.size);
    out.annotations = d.annotations.clone().into_iter().collect();
    Ok(out)
}

pub fn descriptor_to_pb(d: &Descriptor) -> PbDescriptor {
    PbDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

/// Nanoseconds since the epoch to a protobuf timestamp.
pub fn timestamp(nanos: u128) -> prost_types::Timestamp {
    let t = UNIX_EPOCH + Duration::from_nanos(nanos.min(u64::MAX as u128) as u64);
    prost_types::Timestamp::from(t)
}

/// A protobuf timestamp to nanoseconds since the epoch ([`timestamp`]'s
/// inverse); times before 1970 are 1970.
pub fn nanos(t: &prost_types::Timestamp) -> u128 {
    if t.seconds < 0 {
        return 0;
    }
    t.seconds as u128 * 1_000_000_000 + t.nanos.clamp(0, 999_999_999) as u128
}
