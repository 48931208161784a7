//! A tar writer producing exactly the bytes Go's `archive/tar` writes for the
//! headers containerd's exporter uses (name, mode, size, type; zero uid/gid,
//! empty user/group names, mtime 0): USTAR when the fields fit, PAX records
//! for long names or sizes of 8 GiB and more, padding to 512-byte blocks, and
//! two zero blocks at the end (no padding to a 10 KiB record).

use std::io::{self, Write};

pub const TYPE_REG: u8 = b'0';
pub const TYPE_DIR: u8 = b'5';
const TYPE_PAX: u8 = b'x';
const BLOCK: usize = 512;
const NAME_SIZE: usize = 100;
const PREFIX_SIZE: usize = 155;

fn format_string(b: &mut [u8], s: &[u8]) {
    let n = s.len().min(b.len());
    b[..n].copy_from_slice(&s[..n]);
    if s.len() < b.len() {
        b[s.len()] = 0;
    }
    if s.len() > b.len() && b[b.len() - 1] == b'/' {
        let trimmed = s[..b.len()]
            .iter()
            .rposition(|&c| c != b'/')
            .map_or(0, |i| i + 1);
        b[trimmed] = 0;
    }
}

fn fits_in_octal(width: usize, x: i64) -> bool {
    let octal_bits = (width as u32 - 1) * 3;
    x >= 0 && (octal_bits >= 63 || x < (1i64 << octal_bits))
}

fn format_octal(b: &mut [u8], x: i64) {
    let x = if fits_in_octal(b.len(), x) { x } else { 0 };
    let s = format!("{x:o}");
    let pad = (b.len() as isize - s.len() as isize - 1).max(0) as usize;
    let full = format!("{}{}", "0".repeat(pad), s);
    format_string(b, full.as_bytes());
}

/// One block laid out as Go's V7/USTAR header.
fn template(name: &[u8], mode: i64, size: i64, typeflag: u8) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[156] = typeflag;
    format_string(&mut b[0..100], name);
    format_string(&mut b[157..257], b""); // linkname
    format_octal(&mut b[100..108], mode);
    format_octal(&mut b[108..116], 0); // uid
    format_octal(&mut b[116..124], 0); // gid
    format_octal(&mut b[124..136], size);
    format_octal(&mut b[136..148], 0); // mtime: Go writes Unix epoch for a zero time
    format_string(&mut b[265..297], b""); // uname
    format_string(&mut b[297..329], b""); // gname
    format_octal(&mut b[329..337], 0); // devmajor
    format_octal(&mut b[337..345], 0); // devminor
    b
}

fn set_ustar_magic_and_checksum(b: &mut [u8; BLOCK]) {
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    let sum: i64 = b
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if (148..156).contains(&i) {
                b' ' as i64
            } else {
                c as i64
            }
        })
        .sum();
    format_octal(&mut b[148..155], sum);
    b[155] = b' ';
}

fn split_ustar_path(name: &str) -> Option<(&str, &str)> {
    let mut length = name.len();
    if length <= NAME_SIZE || !name.is_ascii() {
        return None;
    } else if length > PREFIX_SIZE + 1 {
        length = PREFIX_SIZE + 1;
    } else if name.as_bytes()[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].rfind('/')?;
    let nlen = name.len() - i - 1;
    if i == 0 || nlen > NAME_SIZE || nlen == 0 || i > PREFIX_SIZE {
        return None;
    }
    Some((&name[..i], &name[i + 1..]))
}

fn pax_record(k: &str, v: &str) -> String {
    let mut size = k.len() + v.len() + 3;
    size += size.to_string().len();
    let mut rec = format!("{size} {k}={v}\n");
    if rec.len() != size {
        size = rec.len();
        rec = format!("{size} {k}={v}\n");
    }
    rec
}

fn pad(w: &mut dyn Write, n: u64) -> io::Result<()> {
    let rem = (n % BLOCK as u64) as usize;
    if rem != 0 {
        w.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

/// Write one header the way Go's `tar.Writer.WriteHeader` does for a header
/// with only name, mode, size and type set.
pub fn write_header(
    w: &mut dyn Write,
    name: &str,
    mode: i64,
    size: i64,
    typeflag: u8,
) -> io::Result<()> {
    let mut pax: Vec<(&str, String)> = Vec::new();
    let mut ustar_ok = true;
    let split = split_ustar_path(name);
    if name.len() > NAME_SIZE || !name.is_ascii() {
        if split.is_none() {
            ustar_ok = false;
        }
        pax.push(("path", name.to_string()));
    }
    if !fits_in_octal(12, size) {
        ustar_ok = false;
        pax.push(("size", size.to_string()));
    }
    if ustar_ok {
        let (prefix, base) = split.unwrap_or(("", name));
        let mut b = template(base.as_bytes(), mode, size, typeflag);
        format_string(&mut b[345..500], prefix.as_bytes());
        set_ustar_magic_and_checksum(&mut b);
        return w.write_all(&b);
    }
    pax.sort_by(|a, b| a.0.cmp(b.0));
    let data: String = pax.iter().map(|(k, v)| pax_record(k, v)).collect();
    let (dir, file) = match name.rfind('/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => ("", name),
    };
    let mut pax_name = clean_join(dir, file);
    pax_name.truncate(NAME_SIZE);
    let pax_name = pax_name.trim_end_matches('/').to_string();
    let mut b = [0u8; BLOCK];
    b[156] = TYPE_PAX;
    format_string(&mut b[0..100], pax_name.as_bytes());
    format_octal(&mut b[100..108], 0);
    format_octal(&mut b[108..116], 0);
    format_octal(&mut b[116..124], 0);
    format_octal(&mut b[124..136], data.len() as i64);
    format_octal(&mut b[136..148], 0);
    set_ustar_magic_and_checksum(&mut b);
    w.write_all(&b)?;
    w.write_all(data.as_bytes())?;
    pad(w, data.len() as u64)?;
    let ascii: String = name.chars().filter(|c| c.is_ascii()).collect();
    let mut b = template(ascii.as_bytes(), mode, size, typeflag);
    set_ustar_magic_and_checksum(&mut b);
    w.write_all(&b)
}

/// Go's `path.Join(dir, "PaxHeaders.0", file)` for a clean blob path.
fn clean_join(dir: &str, file: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() {
        format!("PaxHeaders.0/{file}")
    } else {
        format!("{dir}/PaxHeaders.0/{file}")
    }
}

/// Pad the entry's data to a block boundary.
pub fn finish_entry(w: &mut dyn Write, size: u64) -> io::Result<()> {
    pad(w, size)
}

/// End the archive as Go's `tar.Writer.Close` does: two zero blocks.
pub fn finish_archive(w: &mut dyn Write) -> io::Result<()> {
    w.write_all(&[0u8; 2 * BLOCK])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_ustar_header_like_go() {
        let mut out = Vec::new();
        write_header(&mut out, "oci-layout", 0o444, 30, TYPE_REG).unwrap();
        assert_eq!(out.len(), 512);
        assert_eq!(&out[..10], b"oci-layout");
        assert_eq!(&out[100..108], b"0000444\0");
        assert_eq!(&out[108..116], b"0000000\0");
        assert_eq!(&out[124..136], b"00000000036\0");
        assert_eq!(&out[136..148], b"00000000000\0");
        assert_eq!(&out[257..265], b"ustar\x0000");
        assert_eq!(&out[329..345], b"0000000\x000000000\0");
        assert_eq!(out[155], b' ');
        assert_eq!(out[154], 0);
        // the tar crate agrees the checksum is right
        let h = tar::Header::from_byte_slice(&out);
        assert_eq!(h.cksum().unwrap(), {
            let mut s = 0u32;
            for (i, c) in out.iter().enumerate() {
                s += if (148..156).contains(&i) {
                    32
                } else {
                    *c as u32
                };
            }
            s
        });
    }

    #[test]
    fn uses_pax_for_long_names_and_huge_sizes() {
        let name = format!("blobs/sha512/{}", "a".repeat(128));
        let mut out = Vec::new();
        write_header(&mut out, &name, 0o444, 9 << 30, TYPE_REG).unwrap();
        assert_eq!(out[156], b'x');
        let data = String::from_utf8_lossy(&out[512..1024]);
        assert!(data.starts_with(&format!("151 path={name}\n")), "{data}");
        assert!(data.contains("19 size=9663676416\n"));
        assert_eq!(&out[1024 + 124..1024 + 136], b"00000000000\0");
    }

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record("path", "abcde"), "14 path=abcde\n");
        let r = pax_record("path", &"x".repeat(91));
        assert_eq!(r.len(), 101);
        assert!(r.starts_with("101 "));
    }
}
