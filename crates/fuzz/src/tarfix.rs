//! Keeps mutated tars parseable far enough to reach the code behind the
//! header checks: walks the 512-byte headers the way a reader would (size
//! field, padded body) and rewrites each header's checksum. Without this
//! nearly every byte mutation of a tar dies at "header checksum mismatch".

const BLOCK: usize = 512;

/// Parse a tar numeric field: octal text, or GNU base-256 (high bit set).
fn numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == 0)
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for b in s {
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Recompute the checksum of the header block at `h` (which must be 512 bytes).
pub fn fix_header(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
}

/// Fix the checksum of every header reachable by walking `tar`.
pub fn fix_checksums(tar: &mut [u8]) {
    let mut off = 0;
    while off + BLOCK <= tar.len() {
        let h = &mut tar[off..off + BLOCK];
        if h.iter().all(|b| *b == 0) {
            // end-of-archive marker (or padding): keep walking, a reader may too
            off += BLOCK;
            continue;
        }
        fix_header(h);
        let Some(size) = numeric(&h[124..136]) else {
            return;
        };
        let body = size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64);
        let Some(next) = (off as u64)
            .checked_add(BLOCK as u64)
            .and_then(|n| n.checked_add(body))
        else {
            return;
        };
        if next > tar.len() as u64 {
            return;
        }
        off = next as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_headers_parse_again() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_path("a.txt").unwrap();
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        let mut tar = b.into_inner().unwrap();
        // rename the entry behind the checksum's back
        tar[0] = b'z';
        let names = |t: &[u8]| -> Result<Vec<String>, std::io::Error> {
            let mut a = tar::Archive::new(t);
            let mut out = Vec::new();
            for e in a.entries()? {
                out.push(e?.path()?.display().to_string());
            }
            Ok(out)
        };
        assert!(names(&tar).is_err());
        fix_checksums(&mut tar);
        assert_eq!(names(&tar).unwrap(), vec!["z.txt".to_string()]);
    }
}
