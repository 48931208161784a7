//! The user a container runs as, resolved like containerd's `oci.WithUser`
//! and the CRI's `WithAdditionalGIDs`: names and a lone uid's primary group
//! come from the image's /etc/passwd and /etc/group, read from a read-only
//! view of the image's snapshot (paths resolved inside that root, never
//! through its symlinks to the host).

use crate::client::context;
use crate::core::{Cri, Resolved};
use std::path::Path;
use stevedore_api::services::snapshots::{RemoveSnapshotRequest, ViewSnapshotRequest};
use tonic::Status;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The image's users and groups (empty when it has no such files).
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    passwd: Vec<Passwd>,
    group: Vec<Group>,
}

/// The process's uid, gid and additional gids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

fn parse_passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || l.starts_with('#') {
                return None;
            }
            Some(Passwd {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || l.starts_with('#') {
                return None;
            }
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

impl UserDb {
    pub fn parse(passwd: &str, group: &str) -> UserDb {
        UserDb {
            passwd: parse_passwd(passwd),
            group: parse_group(group),
        }
    }

    /// containerd's `WithUser(userstr)`: `user`, `uid`, `user:group`,
    /// `uid:gid` (names looked up, a lone uid takes its passwd group or 0).
    pub fn resolve(&self, userstr: &str) -> Result<(u32, u32), Status> {
        let (u, g) = match userstr.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (userstr, None),
        };
        let entry = match u.parse::<u32>() {
            Ok(uid) => self
                .passwd
                .iter()
                .find(|p| p.uid == uid)
                .cloned()
                .or(Some(Passwd {
                    name: String::new(),
                    uid,
                    gid: 0,
                })),
            Err(_) => self.passwd.iter().find(|p| p.name == u).cloned(),
        }
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "unable to find user {u}: no matching entries in passwd file"
            ))
        })?;
        let gid = match g {
            None => entry.gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    self.group
                        .iter()
                        .find(|x| x.name == g)
                        .ok_or_else(|| {
                            Status::invalid_argument(format!(
                                "unable to find group {g}: no matching entries in group file"
                            ))
                        })?
                        .gid
                }
            },
        };
        Ok((entry.uid, gid))
    }

    /// containerd's `WithAdditionalGIDs(userstr)`: the groups listing the
    /// user (by name, or the name of the passwd entry of a uid) as a
    /// member, other than its own-named group.
    pub fn additional_gids(&self, userstr: &str) -> Vec<u32> {
        let name = match userstr.parse::<u32>() {
            Ok(uid) => match self.passwd.iter().find(|p| p.uid == uid) {
                Some(p) => p.name.clone(),
                None => return Vec::new(),
            },
            Err(_) => userstr.to_string(),
        };
        self.group
            .iter()
            .filter(|g| g.name != name && g.members.contains(&name))
            .map(|g| g.gid)
            .collect()
    }
}

/// Read `rel` (absolute inside the image) resolved beneath `root`.
fn read_beneath(root: &Path, rel: &str) -> Option<String> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
    use std::io::Read;
    let dir = openat2(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::empty(),
    )
    .ok()?;
    let fd = openat2(
        &dir,
        rel.trim_start_matches('/'),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    let mut f = std::fs::File::from(fd);
    let mut s = String::new();
    f.by_ref().take(4 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

impl Cri {
    /// The users and groups of `image`, from a read-only view of it.
    pub async fn user_db(&self, image: &Resolved, snapshotter: &str) -> Result<UserDb, Status> {
        let key = format!("cri-user-{}", crate::store::generate_id());
        let lease = self.lease(&key).await?;
        let r = async {
            let mounts = self
                .ctrd
                .snapshots()
                .view(crate::client::with_lease(
                    &lease,
                    tonic::Request::new(ViewSnapshotRequest {
                        snapshotter: snapshotter.to_string(),
                        key: key.clone(),
                        parent: image.chain_id.clone(),
                        labels: Default::default(),
                    }),
                ))
                .await
                .map_err(|s| context(s, &format!("view of image {:?}", image.name)))?
                .into_inner()
                .mounts;
            let mounts: Vec<stevedore_types::Mount> = mounts
                .into_iter()
                .map(|m| stevedore_types::Mount {
                    kind: m.r#type,
                    source: m.source,
                    target: m.target,
                    options: m.options,
                })
                .collect();
            let dir = self.state.join("tmpmounts");
            let db = tokio::task::spawn_blocking(move || -> Result<UserDb, Status> {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Status::internal(format!("create {dir:?}: {e}")))?;
                let target = tempdir_in(&dir)?;
                let guard =
                    stevedore_sys::mount::MountGuard::mount(&mounts, &target).map_err(|e| {
                        Status::internal(format!("mount the image to read its users: {e}"))
                    })?;
                let db = UserDb::parse(
                    &read_beneath(&target, "/etc/passwd").unwrap_or_default(),
                    &read_beneath(&target, "/etc/group").unwrap_or_default(),
                );
                let _ = guard.release();
                let _ = std::fs::remove_dir(&target);
                Ok(db)
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
            let _ = self
                .ctrd
                .snapshots()
                .remove(RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.clone(),
                })
                .await;
            db
        }
        .await;
        self.drop_lease(&lease).await;
        r
    }
}

fn tempdir_in(dir: &Path) -> Result<std::path::PathBuf, Status> {
    let p = dir.join(format!("cri-user-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&p).map_err(|e| Status::internal(format!("create {p:?}: {e}")))?;
    Ok(p)
}

/// The CRI's user string (containerd's `generateUserString`): the name,
/// else the uid, with `:gid` when a group is given; "" when none.
pub fn user_string(name: &str, uid: Option<i64>, gid: Option<i64>) -> Result<String, Status> {
    let s = if !name.is_empty() {
        name.to_string()
    } else if let Some(u) = uid {
        u.to_string()
    } else {
        String::new()
    };
    match (s.is_empty(), gid) {
        (true, Some(_)) => Err(Status::invalid_argument(
            "user group is specified without user",
        )),
        (false, Some(g)) => Ok(format!("{s}:{g}")),
        _ => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\nwww:x:33:33::/var/www:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:root,www\nwww:x:33:www\nnogroup:x:65534:\naudio:x:29:www\n";

    #[test]
    fn users_resolve_like_containerd() {
        let db = UserDb::parse(PASSWD, GROUP);
        assert_eq!(db.resolve("www").unwrap(), (33, 33));
        assert_eq!(db.resolve("33").unwrap(), (33, 33));
        assert_eq!(db.resolve("1234").unwrap(), (1234, 0));
        assert_eq!(db.resolve("www:wheel").unwrap(), (33, 10));
        assert_eq!(db.resolve("nobody:7").unwrap(), (65534, 7));
        assert_eq!(
            db.resolve("ghost").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(db.resolve("www:ghosts").is_err());
        assert_eq!(db.additional_gids("www"), vec![10, 29]);
        assert_eq!(db.additional_gids("0"), vec![10]);
        assert_eq!(db.additional_gids("4242"), Vec::<u32>::new());
    }

    #[test]
    fn user_strings() {
        assert_eq!(user_string("", None, None).unwrap(), "");
        assert_eq!(user_string("", Some(1000), None).unwrap(), "1000");
        assert_eq!(user_string("", Some(1000), Some(5)).unwrap(), "1000:5");
        assert_eq!(user_string("www", Some(1), Some(5)).unwrap(), "www:5");
        assert!(user_string("", None, Some(5)).is_err());
    }

    #[test]
    fn files_are_read_beneath_the_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), "secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("etc/passwd")).unwrap();
        // the absolute link resolves inside the root, where it does not exist
        assert_eq!(read_beneath(d.path(), "/etc/passwd"), None);
        std::fs::write(d.path().join("etc/group"), "g:x:1:\n").unwrap();
        assert_eq!(read_beneath(d.path(), "/etc/group").unwrap(), "g:x:1:\n");
    }
}
