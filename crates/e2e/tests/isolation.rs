//! Namespaces isolate: what one namespace holds (content, ingests, images,
//! containers, running tasks, snapshots, leases) is invisible and untouchable
//! from another, over every namespaced service, with containerd's codes
//! (NotFound for a foreign object; lists simply leave it out). Objects in the
//! first namespace are made with the real `ctr`; the second namespace probes
//! them with raw gRPC calls; afterwards the first namespace still has them.

use std::collections::HashMap;
use std::time::Duration;
use stevedore_api::services::containers::{
    containers_client::ContainersClient, Container, CreateContainerRequest, DeleteContainerRequest,
    GetContainerRequest, ListContainersRequest, UpdateContainerRequest,
};
use stevedore_api::services::content::{
    content_client::ContentClient, AbortRequest, DeleteContentRequest, Info as ContentInfo,
    InfoRequest, ListContentRequest, ListStatusesRequest, ReadContentRequest, StatusRequest,
    UpdateRequest, WriteAction, WriteContentRequest,
};
use stevedore_api::services::diff::{diff_client::DiffClient, ApplyRequest};
use stevedore_api::services::events::{events_client::EventsClient, Envelope, SubscribeRequest};
use stevedore_api::services::images::{
    images_client::ImagesClient, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image,
    ListImagesRequest, UpdateImageRequest,
};
use stevedore_api::services::leases::{
    leases_client::LeasesClient, AddResourceRequest, DeleteRequest as DeleteLeaseRequest,
    DeleteResourceRequest, ListRequest as ListLeasesRequest, ListResourcesRequest, Resource,
};
use stevedore_api::services::snapshots::{
    snapshots_client::SnapshotsClient, CleanupRequest, CommitSnapshotRequest, Info as SnapshotInfo,
    ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use stevedore_api::services::stevedore_transfer::{
    transfer_client::TransferClient, ConvertRequest, ExportRequest, PushRequest, RegistryOptions,
};
use stevedore_api::services::tasks::{
    tasks_client::TasksClient, CheckpointTaskRequest, CloseIoRequest, CreateTaskRequest,
    DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetRequest, KillRequest,
    ListPidsRequest, ListTasksRequest, MetricsRequest, PauseTaskRequest, ResizePtyRequest,
    ResumeTaskRequest, StartRequest, UpdateTaskRequest, WaitRequest,
};
use stevedore_api::types::Descriptor;
use stevedore_e2e::{busybox_image, Daemon};
use stevedore_remote::testutil::TestRegistry;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

fn req<T>(ns: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        stevedore_api::NAMESPACE_HEADER,
        MetadataValue::try_from(ns).unwrap(),
    );
    r
}

/// The call failed with `code` (containerd's answer for a foreign object).
#[track_caller]
fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, what: &str) {
    match r {
        Ok(v) => panic!("{what}: succeeded from the other namespace: {v:?}"),
        Err(s) => assert_eq!(s.code(), code, "{what}: {s:?}"),
    }
}

fn mask(path: &str) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: vec![path.into()],
    })
}

/// Two namespace names and ids unique to this daemon, so tests in parallel
/// never share runc state (`/run/containerd/runc/<ns>`) or cgroups (`/<ns>/<id>`).
struct Names {
    a: String,
    b: String,
    id: String,
}

fn names(d: &Daemon) -> Names {
    let suffix: String = d
        .dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    Names {
        a: format!("iso-a-{suffix}"),
        b: format!("iso-b-{suffix}"),
        id: format!("c-{suffix}"),
    }
}

/// Namespace A gets the busybox image (content, image record, committed
/// snapshot) imported and unpacked by the real `ctr`.
fn import_into(d: &Daemon, ns: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    d.ctr_ok(&["-n", ns, "images", "import", img.oci_tar.to_str().unwrap()]);
    (dir, img.name)
}

async fn content_list(ch: &Channel, ns: &str) -> Vec<ContentInfo> {
    let mut s = ContentClient::new(ch.clone())
        .list(req(ns, ListContentRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        out.extend(m.info);
    }
    out
}

/// Start an ingest under `reference` and write `bytes` without committing;
/// returns the offset the daemon reported before writing (where it resumed).
async fn partial_ingest(ch: &Channel, ns: &str, reference: &str, bytes: &[u8]) -> i64 {
    let (tx, rx) = mpsc::channel(4);
    tx.send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut resp = ContentClient::new(ch.clone())
        .write(req(ns, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let start = resp.message().await.unwrap().unwrap().offset;
    tx.send(WriteContentRequest {
        action: WriteAction::Write as i32,
        offset: start,
        data: bytes.to_vec().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    resp.message().await.unwrap().unwrap();
    start
}

/// Export, push and convert of `image` from `ns` fail with NotFound.
/// (`push_to` is a real registry repository: a push that read another
/// namespace's blobs would succeed.)
async fn transfers_refused(ch: &Channel, ns: &str, image: &str, push_to: &str, why: &str) {
    let mut tc = TransferClient::new(ch.clone());
    let export = tc
        .export(req(
            ns,
            ExportRequest {
                names: vec![image.to_string()],
                ..Default::default()
            },
        ))
        .await;
    match export {
        Err(s) => assert_eq!(s.code(), Code::NotFound, "{why}: transfer export: {s:?}"),
        Ok(r) => assert_code(
            r.into_inner().message().await,
            Code::NotFound,
            &format!("{why}: transfer export"),
        ),
    }
    let push = tc
        .push(req(
            ns,
            PushRequest {
                source: image.to_string(),
                reference: push_to.to_string(),
                registry: Some(RegistryOptions {
                    plain_http: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await;
    match push {
        Err(s) => assert_eq!(s.code(), Code::NotFound, "{why}: transfer push: {s:?}"),
        Ok(r) => assert_code(
            r.into_inner().message().await,
            Code::NotFound,
            &format!("{why}: transfer push"),
        ),
    }
    assert_code(
        tc.convert(req(
            ns,
            ConvertRequest {
                source: image.to_string(),
                target: format!("{image}-converted"),
                oci: true,
                ..Default::default()
            },
        ))
        .await,
        Code::NotFound,
        &format!("{why}: transfer convert"),
    );
}

/// Write `bytes` through a fresh ingest and commit them with their digest.
async fn ingest_commit(ch: &Channel, ns: &str, reference: &str, bytes: &[u8]) {
    let digest = stevedore_content::digest_of(bytes).to_string();
    let total = bytes.len() as i64;
    let (tx, rx) = mpsc::channel(4);
    for m in [
        WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.into(),
            total,
            data: bytes.to_vec().into(),
            ..Default::default()
        },
        WriteContentRequest {
            action: WriteAction::Commit as i32,
            total,
            offset: total,
            expected: digest.clone(),
            ..Default::default()
        },
    ] {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    let mut resp = ContentClient::new(ch.clone())
        .write(req(ns, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let mut committed = String::new();
    while let Some(m) = resp.message().await.unwrap() {
        committed = m.digest;
    }
    assert_eq!(committed, digest);
}

/// Commit `digest` of `size` under `reference` without sending any byte
/// (an ingest opened with the expected digest, then committed).
async fn commit_by_digest(
    ch: &Channel,
    ns: &str,
    reference: &str,
    digest: &str,
    size: i64,
) -> Result<String, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.into(),
        total: size,
        expected: digest.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut resp = ContentClient::new(ch.clone())
        .write(req(ns, ReceiverStream::new(rx)))
        .await?
        .into_inner();
    let offset = resp.message().await?.map(|m| m.offset).unwrap_or(0);
    tx.send(WriteContentRequest {
        action: WriteAction::Commit as i32,
        total: size,
        offset,
        expected: digest.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    Ok(resp.message().await?.map(|m| m.digest).unwrap_or_default())
}

/// A blob's bytes as `ns` reads them.
async fn read_all(ch: &Channel, ns: &str, digest: &str) -> Vec<u8> {
    let mut s = ContentClient::new(ch.clone())
        .read(req(
            ns,
            ReadContentRequest {
                digest: digest.into(),
                offset: 0,
                size: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        out.extend(m.data);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_images_leases_diff_and_transfer_of_one_namespace_are_invisible_from_another() {
    let d = Daemon::start();
    let n = names(&d);
    let (a, b) = (n.a.as_str(), n.b.as_str());
    let (_dir, image) = import_into(&d, a);
    d.ctr_ok(&["namespaces", "create", b]);
    d.ctr_ok(&["-n", a, "leases", "create", "--id", "lease-a"]);
    let ch = d.channel().await;

    // --- content
    let a_blobs = content_list(&ch, a).await;
    assert!(!a_blobs.is_empty());
    assert!(content_list(&ch, b).await.is_empty(), "B lists A's blobs");
    let blob = a_blobs[0].digest.clone();
    let mut cc = ContentClient::new(ch.clone());
    assert_code(
        cc.info(req(
            b,
            InfoRequest {
                digest: blob.clone(),
            },
        ))
        .await,
        Code::NotFound,
        "content info",
    );
    let read = cc
        .read(req(
            b,
            ReadContentRequest {
                digest: blob.clone(),
                offset: 0,
                size: 0,
            },
        ))
        .await;
    // a server-streaming call may report the error on the first message
    match read {
        Err(s) => assert_eq!(s.code(), Code::NotFound, "content read: {s:?}"),
        Ok(r) => assert_code(
            r.into_inner().message().await,
            Code::NotFound,
            "content read",
        ),
    }
    assert_code(
        cc.update(req(
            b,
            UpdateRequest {
                info: Some(ContentInfo {
                    digest: blob.clone(),
                    labels: HashMap::from([("stolen".into(), "yes".into())]),
                    ..Default::default()
                }),
                update_mask: mask("labels.stolen"),
            },
        ))
        .await,
        Code::NotFound,
        "content update",
    );
    assert_code(
        cc.delete(req(
            b,
            DeleteContentRequest {
                digest: blob.clone(),
            },
        ))
        .await,
        Code::NotFound,
        "content delete",
    );
    // ingests: A's active ingest is neither listed, reported nor abortable
    // from B, and B's ingest under the same ref starts from zero
    assert_eq!(
        partial_ingest(&ch, a, "same-ref", b"from A, partial").await,
        0
    );
    let list_statuses = |ns: String| {
        let mut c = ContentClient::new(ch.clone());
        async move {
            c.list_statuses(req(&ns, ListStatusesRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .statuses
        }
    };
    assert_eq!(list_statuses(a.to_string()).await.len(), 1);
    assert!(
        list_statuses(b.to_string()).await.is_empty(),
        "B lists A's ingests"
    );
    assert_code(
        cc.status(req(
            b,
            StatusRequest {
                r#ref: "same-ref".into(),
            },
        ))
        .await,
        Code::NotFound,
        "content status",
    );
    assert_code(
        cc.abort(req(
            b,
            AbortRequest {
                r#ref: "same-ref".into(),
            },
        ))
        .await,
        Code::NotFound,
        "content abort",
    );
    for r in [format!("../{a}/same-ref"), format!("{a}/same-ref")] {
        assert_code(
            cc.status(req(b, StatusRequest { r#ref: r.clone() })).await,
            Code::NotFound,
            &format!("content status {r}"),
        );
    }
    assert_eq!(
        partial_ingest(&ch, b, "same-ref", b"B's own").await,
        0,
        "B's ingest under A's ref resumed A's bytes"
    );
    let a_status = cc
        .status(req(
            a,
            StatusRequest {
                r#ref: "same-ref".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(a_status.offset, b"from A, partial".len() as i64);
    cc.abort(req(
        b,
        AbortRequest {
            r#ref: "same-ref".into(),
        },
    ))
    .await
    .unwrap();
    cc.status(req(
        a,
        StatusRequest {
            r#ref: "same-ref".into(),
        },
    ))
    .await
    .expect("B's abort left A's ingest alone");

    // --- images
    let mut ic = ImagesClient::new(ch.clone());
    let a_images = ic
        .list(req(a, ListImagesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(a_images.iter().any(|i| i.name == image));
    assert!(ic
        .list(req(b, ListImagesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .images
        .is_empty());
    assert_code(
        ic.get(req(
            b,
            GetImageRequest {
                name: image.clone(),
            },
        ))
        .await,
        Code::NotFound,
        "image get",
    );
    let target = a_images[0].target.clone();
    assert_code(
        ic.update(req(
            b,
            UpdateImageRequest {
                image: Some(Image {
                    name: image.clone(),
                    target: target.clone(),
                    labels: HashMap::from([("stolen".into(), "yes".into())]),
                    ..Default::default()
                }),
                update_mask: mask("labels"),
                source_date_epoch: None,
            },
        ))
        .await,
        Code::NotFound,
        "image update",
    );
    assert_code(
        ic.delete(req(
            b,
            DeleteImageRequest {
                name: image.clone(),
                sync: true,
                target: None,
            },
        ))
        .await,
        Code::NotFound,
        "image delete",
    );
    // --- leases
    let mut lc = LeasesClient::new(ch.clone());
    let lease_ids = |ns: String| {
        let mut c = LeasesClient::new(ch.clone());
        async move {
            c.list(req(&ns, ListLeasesRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .leases
                .into_iter()
                .map(|l| l.id)
                .collect::<Vec<_>>()
        }
    };
    assert!(lease_ids(a.to_string())
        .await
        .contains(&"lease-a".to_string()));
    assert!(!lease_ids(b.to_string())
        .await
        .contains(&"lease-a".to_string()));
    let resource = Resource {
        id: blob.clone(),
        r#type: "content".into(),
    };
    assert_code(
        lc.add_resource(req(
            b,
            AddResourceRequest {
                id: "lease-a".into(),
                resource: Some(resource.clone()),
            },
        ))
        .await,
        Code::NotFound,
        "lease add resource",
    );
    assert_code(
        lc.list_resources(req(
            b,
            ListResourcesRequest {
                id: "lease-a".into(),
            },
        ))
        .await,
        Code::NotFound,
        "lease list resources",
    );
    assert_code(
        lc.delete_resource(req(
            b,
            DeleteResourceRequest {
                id: "lease-a".into(),
                resource: Some(resource),
            },
        ))
        .await,
        Code::NotFound,
        "lease delete resource",
    );
    assert_code(
        lc.delete(req(
            b,
            DeleteLeaseRequest {
                id: "lease-a".into(),
                sync: true,
            },
        ))
        .await,
        Code::NotFound,
        "lease delete",
    );

    // --- diff: B cannot apply A's layer (the layer is read from B's content)
    let layer = a_blobs
        .iter()
        .max_by_key(|i| i.size)
        .expect("a layer blob")
        .clone();
    let scratch = d.dir.path().join("apply-b");
    std::fs::create_dir_all(&scratch).unwrap();
    assert_code(
        DiffClient::new(ch.clone())
            .apply(req(
                b,
                ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                        ..Default::default()
                    }),
                    mounts: vec![stevedore_api::types::Mount {
                        r#type: "bind".into(),
                        source: scratch.display().to_string(),
                        target: String::new(),
                        options: vec!["rbind".into(), "rw".into()],
                    }],
                    ..Default::default()
                },
            ))
            .await,
        Code::NotFound,
        "diff apply",
    );
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "a refused apply wrote into the mounts"
    );

    let registry = TestRegistry::start();
    let push_to = format!("{}/iso/stolen:latest", registry.host());
    // --- transfer: export, push and convert take image names of the
    // caller's namespace and read only that namespace's content
    transfers_refused(&ch, b, &image, &push_to, "no such image in B").await;
    ic.create(req(
        b,
        CreateImageRequest {
            image: Some(Image {
                name: image.clone(),
                target: target.clone(),
                ..Default::default()
            }),
            source_date_epoch: None,
        },
    ))
    .await
    .unwrap();
    transfers_refused(&ch, b, &image, &push_to, "B's image over A's content").await;
    ic.delete(req(
        b,
        DeleteImageRequest {
            name: image.clone(),
            sync: true,
            target: None,
        },
    ))
    .await
    .unwrap();

    // --- shared bytes: B proves it has one of A's blobs by writing it, then
    // deletes its record and collects garbage; A's blob stays whole
    let small = a_blobs
        .iter()
        .min_by_key(|i| i.size)
        .unwrap()
        .digest
        .clone();
    let bytes = read_all(&ch, a, &small).await;
    ingest_commit(&ch, b, "copy-of-a", &bytes).await;
    assert_eq!(read_all(&ch, b, &small).await, bytes);
    cc.delete(req(
        b,
        DeleteContentRequest {
            digest: small.clone(),
        },
    ))
    .await
    .unwrap();
    d.ctr_ok(&["-n", b, "leases", "create", "--id", "gc"]);
    d.ctr_ok(&["-n", b, "leases", "rm", "--sync", "gc"]);
    assert_eq!(
        read_all(&ch, a, &small).await,
        bytes,
        "B's delete + GC took A's blob"
    );

    // containerd's default "shared" content policy: naming a digest and size
    // that exist on disk commits them into the namespace without the bytes
    let big = a_blobs.iter().max_by_key(|i| i.size).unwrap();
    let wrong = commit_by_digest(&ch, b, "claim-wrong-size", &big.digest, big.size + 1).await;
    assert!(wrong.is_err(), "committed with a wrong size: {wrong:?}");
    assert_code(
        cc.info(req(
            b,
            InfoRequest {
                digest: big.digest.clone(),
            },
        ))
        .await,
        Code::NotFound,
        "content info after a refused claim",
    );
    let r = commit_by_digest(&ch, b, "claim", &big.digest, big.size).await;
    assert_eq!(r.unwrap(), big.digest);
    let claimed = read_all(&ch, b, &big.digest).await;
    assert_eq!(
        stevedore_content::digest_of(&claimed).to_string(),
        big.digest
    );

    // --- A is untouched, and A itself may push its image to that registry
    let mut pushed = TransferClient::new(ch.clone())
        .push(req(
            a,
            PushRequest {
                source: image.clone(),
                reference: push_to.clone(),
                registry: Some(RegistryOptions {
                    plain_http: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut done = false;
    while let Some(p) = pushed.message().await.unwrap() {
        done |= p.done;
    }
    assert!(done, "A's push did not finish");
    let after = content_list(&ch, a).await;
    assert_eq!(after.len(), a_blobs.len());
    assert!(after.iter().all(|i| !i.labels.contains_key("stolen")));
    let img = ic
        .get(req(
            a,
            GetImageRequest {
                name: image.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert!(!img.labels.contains_key("stolen"));
    assert!(lease_ids(a.to_string())
        .await
        .contains(&"lease-a".to_string()));
    let check = d.ctr_ok(&["-n", a, "images", "check"]);
    assert!(check.contains("complete"), "{check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_one_namespace_are_invisible_and_keys_are_per_namespace() {
    let d = Daemon::start();
    let n = names(&d);
    let (a, b) = (n.a.as_str(), n.b.as_str());
    let (_dir, _image) = import_into(&d, a);
    d.ctr_ok(&["namespaces", "create", b]);
    let ch = d.channel().await;
    let sn = "overlayfs".to_string();
    let list = |ns: String| {
        let ch = ch.clone();
        let sn = sn.clone();
        async move {
            let mut s = SnapshotsClient::new(ch)
                .list(req(
                    &ns,
                    ListSnapshotsRequest {
                        snapshotter: sn,
                        filters: vec![],
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            let mut out: Vec<SnapshotInfo> = Vec::new();
            while let Some(m) = s.message().await.unwrap() {
                out.extend(m.info);
            }
            out
        }
    };
    let committed = list(a.to_string()).await;
    assert_eq!(committed.len(), 1, "{committed:?}");
    let chain = committed[0].name.clone();
    let mut sc = SnapshotsClient::new(ch.clone());
    // a GC root, so the collector keeps this unreferenced active snapshot
    let root = HashMap::from([("containerd.io/gc.root".to_string(), "test".to_string())]);
    sc.prepare(req(
        a,
        PrepareSnapshotRequest {
            snapshotter: sn.clone(),
            key: "work".into(),
            parent: chain.clone(),
            labels: root.clone(),
        },
    ))
    .await
    .unwrap();
    assert!(
        list(b.to_string()).await.is_empty(),
        "B lists A's snapshots"
    );
    for key in [chain.as_str(), "work"] {
        assert_code(
            sc.stat(req(
                b,
                StatSnapshotRequest {
                    snapshotter: sn.clone(),
                    key: key.into(),
                },
            ))
            .await,
            Code::NotFound,
            "snapshot stat",
        );
        assert_code(
            sc.usage(req(
                b,
                UsageRequest {
                    snapshotter: sn.clone(),
                    key: key.into(),
                },
            ))
            .await,
            Code::NotFound,
            "snapshot usage",
        );
        assert_code(
            sc.update(req(
                b,
                UpdateSnapshotRequest {
                    snapshotter: sn.clone(),
                    info: Some(SnapshotInfo {
                        name: key.into(),
                        labels: HashMap::from([("stolen".into(), "yes".into())]),
                        ..Default::default()
                    }),
                    update_mask: mask("labels.stolen"),
                },
            ))
            .await,
            Code::NotFound,
            "snapshot update",
        );
        assert_code(
            sc.remove(req(
                b,
                RemoveSnapshotRequest {
                    snapshotter: sn.clone(),
                    key: key.into(),
                },
            ))
            .await,
            Code::NotFound,
            "snapshot remove",
        );
    }
    assert_code(
        sc.mounts(req(
            b,
            MountsRequest {
                snapshotter: sn.clone(),
                key: "work".into(),
            },
        ))
        .await,
        Code::NotFound,
        "snapshot mounts",
    );
    // keys and parents that look like paths stay inside B
    for key in [
        format!("../{a}/work"),
        format!("/{a}/work"),
        format!("{a}/work"),
    ] {
        assert_code(
            sc.mounts(req(
                b,
                MountsRequest {
                    snapshotter: sn.clone(),
                    key: key.clone(),
                },
            ))
            .await,
            Code::NotFound,
            &format!("snapshot mounts {key}"),
        );
        assert_code(
            sc.view(req(
                b,
                ViewSnapshotRequest {
                    snapshotter: sn.clone(),
                    key: "peek".into(),
                    parent: key.replace("work", &chain),
                    labels: HashMap::new(),
                },
            ))
            .await,
            Code::NotFound,
            &format!("snapshot view on {key}"),
        );
    }
    assert_code(
        sc.commit(req(
            b,
            CommitSnapshotRequest {
                snapshotter: sn.clone(),
                name: "stolen".into(),
                key: "work".into(),
                labels: HashMap::new(),
            },
        ))
        .await,
        Code::NotFound,
        "snapshot commit",
    );
    // A's committed layer cannot be a parent in B
    assert_code(
        sc.view(req(
            b,
            ViewSnapshotRequest {
                snapshotter: sn.clone(),
                key: "peek".into(),
                parent: chain.clone(),
                labels: HashMap::new(),
            },
        ))
        .await,
        Code::NotFound,
        "snapshot view on A's parent",
    );
    assert_code(
        sc.prepare(req(
            b,
            PrepareSnapshotRequest {
                snapshotter: sn.clone(),
                key: "peek2".into(),
                parent: chain.clone(),
                labels: HashMap::new(),
            },
        ))
        .await,
        Code::NotFound,
        "snapshot prepare on A's parent",
    );
    // the same key is independent in B: prepare, commit, remove
    sc.prepare(req(
        b,
        PrepareSnapshotRequest {
            snapshotter: sn.clone(),
            key: "work".into(),
            parent: String::new(),
            labels: HashMap::new(),
        },
    ))
    .await
    .expect("the same key in another namespace");
    sc.commit(req(
        b,
        CommitSnapshotRequest {
            snapshotter: sn.clone(),
            name: chain.clone(),
            key: "work".into(),
            labels: HashMap::new(),
        },
    ))
    .await
    .expect("committing under A's chain ID in B");
    let b_list = list(b.to_string()).await;
    assert_eq!(b_list.len(), 1, "{b_list:?}");
    assert_eq!(b_list[0].parent, "");
    sc.remove(req(
        b,
        RemoveSnapshotRequest {
            snapshotter: sn.clone(),
            key: chain.clone(),
        },
    ))
    .await
    .unwrap();
    // a cleanup asked for from B removes only what no namespace records
    sc.cleanup(req(
        b,
        CleanupRequest {
            snapshotter: sn.clone(),
        },
    ))
    .await
    .unwrap();
    // A still has both, unlabelled
    let after = list(a.to_string()).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|i| !i.labels.contains_key("stolen")));
    let m = sc
        .mounts(req(
            a,
            MountsRequest {
                snapshotter: sn.clone(),
                key: "work".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert!(!m.is_empty());
    let dirs: Vec<&str> = m[0]
        .options
        .iter()
        .filter_map(|o| o.split_once('=').map(|(_, v)| v))
        .flat_map(|v| v.split(':'))
        .filter(|p| p.starts_with('/'))
        .collect();
    assert!(!dirs.is_empty(), "{m:?}");
    for p in dirs {
        assert!(
            std::path::Path::new(p).is_dir(),
            "{p} gone after B's cleanup"
        );
    }
    let usage = d.ctr_ok(&["-n", a, "snapshots", "usage"]);
    assert!(usage.contains(&chain), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_and_a_running_task_cannot_be_seen_or_touched_from_another_namespace() {
    let d = Daemon::start();
    let n = names(&d);
    let (a, b, id) = (n.a.as_str(), n.b.as_str(), n.id.as_str());
    let (_dir, image) = import_into(&d, a);
    d.ctr_ok(&["namespaces", "create", b]);
    d.ctr_ok(&["-n", a, "run", "-d", &image, id, "sleep", "600"]);
    let ch = d.channel().await;
    let mut cc = ContainersClient::new(ch.clone());
    let mut tc = TasksClient::new(ch.clone());
    let a_task = tc
        .get(req(
            a,
            GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    assert_eq!(a_task.status, 2, "running: {a_task:?}");

    // --- containers
    assert!(cc
        .list(req(b, ListContainersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .containers
        .is_empty());
    let mut stream = cc
        .list_stream(req(b, ListContainersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        stream.message().await.unwrap().is_none(),
        "B streams A's container"
    );
    assert_code(
        cc.get(req(b, GetContainerRequest { id: id.into() })).await,
        Code::NotFound,
        "container get",
    );
    assert_code(
        cc.update(req(
            b,
            UpdateContainerRequest {
                container: Some(Container {
                    id: id.into(),
                    labels: HashMap::from([("stolen".into(), "yes".into())]),
                    ..Default::default()
                }),
                update_mask: mask("labels.stolen"),
            },
        ))
        .await,
        Code::NotFound,
        "container update",
    );
    assert_code(
        cc.delete(req(b, DeleteContainerRequest { id: id.into() }))
            .await,
        Code::NotFound,
        "container delete",
    );

    // --- tasks
    assert!(tc
        .list(req(b, ListTasksRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tasks
        .is_empty());
    assert!(tc
        .metrics(req(b, MetricsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .metrics
        .is_empty());
    let cid = || id.to_string();
    assert_code(
        tc.get(req(
            b,
            GetRequest {
                container_id: cid(),
                exec_id: String::new(),
            },
        ))
        .await,
        Code::NotFound,
        "task get",
    );
    assert_code(
        tc.kill(req(
            b,
            KillRequest {
                container_id: cid(),
                exec_id: String::new(),
                signal: 9,
                all: true,
            },
        ))
        .await,
        Code::NotFound,
        "task kill",
    );
    assert_code(
        tc.pause(req(
            b,
            PauseTaskRequest {
                container_id: cid(),
            },
        ))
        .await,
        Code::NotFound,
        "task pause",
    );
    assert_code(
        tc.resume(req(
            b,
            ResumeTaskRequest {
                container_id: cid(),
            },
        ))
        .await,
        Code::NotFound,
        "task resume",
    );
    let spec = prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: br#"{"args":["sh","-c","echo pwned"],"cwd":"/","user":{"uid":0,"gid":0}}"#.to_vec(),
    };
    assert_code(
        tc.exec(req(
            b,
            ExecProcessRequest {
                container_id: cid(),
                exec_id: "intruder".into(),
                spec: Some(spec),
                ..Default::default()
            },
        ))
        .await,
        Code::NotFound,
        "task exec",
    );
    assert_code(
        tc.list_pids(req(
            b,
            ListPidsRequest {
                container_id: cid(),
            },
        ))
        .await,
        Code::NotFound,
        "task pids",
    );
    assert_code(
        tc.wait(req(
            b,
            WaitRequest {
                container_id: cid(),
                exec_id: String::new(),
            },
        ))
        .await,
        Code::NotFound,
        "task wait",
    );
    assert_code(
        tc.update(req(
            b,
            UpdateTaskRequest {
                container_id: cid(),
                ..Default::default()
            },
        ))
        .await,
        Code::NotFound,
        "task update",
    );
    assert_code(
        tc.close_io(req(
            b,
            CloseIoRequest {
                container_id: cid(),
                exec_id: String::new(),
                stdin: true,
            },
        ))
        .await,
        Code::NotFound,
        "task close io",
    );
    assert_code(
        tc.resize_pty(req(
            b,
            ResizePtyRequest {
                container_id: cid(),
                exec_id: String::new(),
                width: 10,
                height: 10,
            },
        ))
        .await,
        Code::NotFound,
        "task resize pty",
    );
    assert_code(
        tc.start(req(
            b,
            StartRequest {
                container_id: cid(),
                exec_id: String::new(),
            },
        ))
        .await,
        Code::NotFound,
        "task start",
    );
    assert_code(
        tc.delete_process(req(
            b,
            DeleteProcessRequest {
                container_id: cid(),
                exec_id: "intruder".into(),
            },
        ))
        .await,
        Code::NotFound,
        "task delete process",
    );
    assert_code(
        tc.delete(req(
            b,
            DeleteTaskRequest {
                container_id: cid(),
            },
        ))
        .await,
        Code::NotFound,
        "task delete",
    );
    assert_code(
        tc.checkpoint(req(
            b,
            CheckpointTaskRequest {
                container_id: cid(),
                ..Default::default()
            },
        ))
        .await,
        Code::NotFound,
        "task checkpoint",
    );
    // there is no container of that id in B to create a task for
    assert_code(
        tc.create(req(
            b,
            CreateTaskRequest {
                container_id: cid(),
                ..Default::default()
            },
        ))
        .await,
        Code::NotFound,
        "task create",
    );
    // the ctr view agrees
    let ls = d.ctr_ok(&["-n", b, "tasks", "ls"]);
    assert!(!ls.contains(id), "{ls}");
    let o = d.ctr(&["-n", b, "tasks", "kill", "-s", "KILL", id]);
    assert!(!o.status.success(), "ctr kill from B succeeded");

    // --- A's task still runs and is the same process; A's container unlabelled
    let after = tc
        .get(req(
            a,
            GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    assert_eq!((after.pid, after.status), (a_task.pid, 2), "{after:?}");
    assert!(std::path::Path::new(&format!("/proc/{}", a_task.pid)).exists());
    let c = cc
        .get(req(a, GetContainerRequest { id: id.into() }))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert!(!c.labels.contains_key("stolen"));
    // the same container id is free in B (its own record, not A's)
    cc.create(req(
        b,
        CreateContainerRequest {
            container: Some(Container {
                id: id.into(),
                image: "elsewhere".into(),
                runtime: Some(stevedore_api::services::containers::container::Runtime {
                    name: "io.containerd.runc.v2".into(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                    value: b"{}".to_vec(),
                }),
                ..Default::default()
            }),
        },
    ))
    .await
    .expect("the same container id in another namespace");
    cc.delete(req(b, DeleteContainerRequest { id: id.into() }))
        .await
        .unwrap();
    let info = d.ctr_ok(&["-n", a, "containers", "info", id]);
    assert!(info.contains(&image), "{info}");

    d.ctr_ok(&["-n", a, "tasks", "kill", "-s", "KILL", id]);
    let mut removed = false;
    for _ in 0..100 {
        if d.ctr(&["-n", a, "tasks", "rm", id]).status.success() {
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(removed, "task in A did not exit after SIGKILL");
    d.ctr_ok(&["-n", a, "containers", "rm", id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_subscribers_filtered_by_namespace_see_only_that_namespace() {
    let d = Daemon::start();
    let n = names(&d);
    let (a, b) = (n.a.clone(), n.b.clone());
    let ch = d.channel().await;
    let subscribe = |ns: String| {
        let ch = ch.clone();
        async move {
            EventsClient::new(ch)
                .subscribe(Request::new(SubscribeRequest {
                    filters: vec![format!("namespace=={ns}")],
                }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut sub_a = subscribe(a.clone()).await;
    let mut sub_b = subscribe(b.clone()).await;
    let mut ic = ImagesClient::new(ch.clone());
    let create = |name: &str| CreateImageRequest {
        image: Some(Image {
            name: name.into(),
            target: Some(Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
                size: 10,
                ..Default::default()
            }),
            ..Default::default()
        }),
        source_date_epoch: None,
    };
    // subscriptions are live once a first event gets through; B acts first,
    // then A, several rounds, so A's subscriber would have seen B's by then
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    for round in 0..3 {
        ic.create(req(&b, create(&format!("b/img:{round}"))))
            .await
            .unwrap();
        ic.create(req(&a, create(&format!("a/img:{round}"))))
            .await
            .unwrap();
        let ea = tokio::time::timeout(Duration::from_secs(10), sub_a.message())
            .await
            .expect("A's subscriber got no event")
            .unwrap()
            .unwrap();
        seen_a.push(ea);
        let eb = tokio::time::timeout(Duration::from_secs(10), sub_b.message())
            .await
            .expect("B's subscriber got no event")
            .unwrap()
            .unwrap();
        seen_b.push(eb);
    }
    // and whatever else arrives
    drain(&mut sub_a, &mut seen_a).await;
    drain(&mut sub_b, &mut seen_b).await;
    assert!(seen_a.len() >= 3 && seen_b.len() >= 3);
    assert!(
        seen_a.iter().all(|e| e.namespace == a),
        "A's subscriber saw: {seen_a:?}"
    );
    assert!(
        seen_b.iter().all(|e| e.namespace == b),
        "B's subscriber saw: {seen_b:?}"
    );
    assert!(seen_a.iter().any(|e| e.topic == "/images/create"));
}

async fn drain(s: &mut tonic::Streaming<Envelope>, out: &mut Vec<Envelope>) {
    while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_millis(300), s.message()).await
    {
        out.push(e);
    }
}

// ---------------------------------------------------------------- permissions

/// Run `cmd` as another user: `uid`/`gid`, in `groups` only (none: no
/// supplementary groups), with util-linux `setpriv`.
fn as_user(uid: u32, groups: &[u32], cmd: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(stevedore_e2e::require_tool("setpriv", "util-linux"));
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let g: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", g.join(",")));
    }
    c.args(cmd).env("HOME", "/").output().expect("run setpriv")
}

/// Connect to a unix socket as another user; the error text when refused.
fn connect_as(uid: u32, groups: &[u32], socket: &std::path::Path) -> Result<(), String> {
    // Debian's python3: the one in root's PATH may live where others cannot go
    let python = "/usr/bin/python3";
    assert!(
        std::path::Path::new(python).exists(),
        "{python} is required by this test: apt-get install python3"
    );
    let o = as_user(
        uid,
        groups,
        &[
            python,
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
            socket.to_str().unwrap(),
        ],
    );
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).to_string())
    }
}

#[test]
fn sockets_are_0660_and_refuse_users_outside_the_configured_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // ids no account on the machine uses, distinct per test process
    let base = 47_000 + (std::process::id() % 4_000) * 3;
    let (member, outsider, group) = (base, base + 1, base + 2);
    let d = Daemon::start_with_config(Some(&format!("version = 2\n[grpc]\ngid = {group}\n")));
    // the test's temp dir is 0700: let other users reach the sockets in it
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let ttrpc = std::path::PathBuf::from(format!("{}.ttrpc", d.socket.display()));
    for s in [&d.socket, &ttrpc] {
        let m = std::fs::metadata(s).unwrap();
        assert_eq!(m.mode() & 0o777, 0o660, "{}", s.display());
        assert_eq!((m.uid(), m.gid()), (0, group), "{}", s.display());
    }
    let sock = d.socket.to_str().unwrap();
    let version = [
        "ctr",
        "--address",
        sock,
        "--connect-timeout",
        "5s",
        "version",
    ];
    // a user outside the group: refused at connect
    let o = as_user(outsider, &[], &version);
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(!o.status.success(), "outsider reached the daemon");
    assert!(err.contains("permission denied"), "{err}");
    // a member of the configured group: served
    let o = as_user(member, &[group], &version);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("Server:"),
        "group member refused: {}{}",
        out,
        String::from_utf8_lossy(&o.stderr)
    );
    // the ttrpc socket (shim events) follows the gRPC socket's group
    let e = connect_as(outsider, &[], &ttrpc).expect_err("outsider reached the ttrpc socket");
    assert!(e.contains("PermissionError"), "{e}");
    connect_as(member, &[group], &ttrpc).expect("group member refused on the ttrpc socket");
}

#[test]
fn ttrpc_socket_takes_its_own_address_owner_and_group() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let ttrpc = dir.path().join("events.ttrpc");
    let d = Daemon::start_with_config(Some(&format!(
        "version = 2\n[grpc]\ngid = 1\n[ttrpc]\naddress = \"{}\"\nuid = 2\ngid = 3\n",
        ttrpc.display()
    )));
    let m = std::fs::metadata(&ttrpc).expect("ttrpc socket at the configured address");
    assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o660, 2, 3));
    let m = std::fs::metadata(&d.socket).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o660, 0, 1));
    assert!(!std::path::Path::new(&format!("{}.ttrpc", d.socket.display())).exists());
}

// ------------------------------------------------- layers escaping the rootfs

/// A tar header owned by root, mtime 0 (the rest is set per entry).
fn header() -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// An OCI archive of a one-layer image (uncompressed layer) named `name`.
fn oci_archive(name: &str, layer: Vec<u8>) -> Vec<u8> {
    use stevedore_content::digest_of;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let layer_digest = digest_of(&layer).to_string();
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        digest_of(&config),
        config.len(),
        layer.len()
    )
    .into_bytes();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"latest"}}}}]}}"#,
        digest_of(&manifest),
        manifest.len()
    )
    .into_bytes();
    let mut b = tar::Builder::new(Vec::new());
    let mut file = |path: &str, data: &[u8]| {
        let mut h = header();
        h.set_mode(0o444);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    };
    file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    file("index.json", &index);
    for blob in [&layer, &config, &manifest] {
        let path = format!("blobs/sha256/{}", digest_of(blob).hex());
        file(&path, blob);
    }
    b.into_inner().unwrap()
}

/// A layer tar: a symlink `link` -> `target`, then files written through it.
fn layer_through_symlink(link: &str, target: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = header();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "etc/", std::io::empty()).unwrap();
    let mut l = header();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_mode(0o777);
    l.set_size(0);
    b.append_link(&mut l, link, target).unwrap();
    for (name, data) in [
        ("sentinel", &b"overwritten"[..]),
        ("planted", &b"planted"[..]),
    ] {
        let mut h = header();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("{link}/{name}"), data)
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// Whether a file called `name` exists anywhere below `dir` (symlinks not followed).
fn find(dir: &std::path::Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name() == name
                || (e.file_type().map(|t| t.is_dir()).unwrap_or(false) && find(&e.path(), name))
        })
}

fn listing(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let p = e.path();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read_to_string(&p).unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn importing_a_layer_that_writes_through_a_symlink_never_touches_files_outside_the_root() {
    let d = Daemon::start();
    let outside = d.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("sentinel"), "untouched").unwrap();
    let before = listing(&outside);
    let abs = outside.display().to_string();
    let rel = format!("{}{}", "../".repeat(24), abs.trim_start_matches('/'));
    for (i, (kind, target)) in [("absolute", abs.as_str()), ("relative", rel.as_str())]
        .into_iter()
        .enumerate()
    {
        for snapshotter in ["overlayfs", "native"] {
            let name = format!("docker.io/library/escape-{kind}-{snapshotter}:latest");
            let tar_path = d.dir.path().join(format!("escape-{i}-{snapshotter}.tar"));
            std::fs::write(
                &tar_path,
                oci_archive(&name, layer_through_symlink("escape", target)),
            )
            .unwrap();
            let o = d.ctr(&[
                "images",
                "import",
                "--snapshotter",
                snapshotter,
                tar_path.to_str().unwrap(),
            ]);
            // either the apply is refused or it stays inside the snapshot
            assert_eq!(
                listing(&outside),
                before,
                "{kind} symlink escaped with {snapshotter}: ctr said {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            eprintln!(
                "{kind} symlink, {snapshotter}: {}",
                if o.status.success() {
                    "imported, contained".to_string()
                } else {
                    String::from_utf8_lossy(&o.stderr).trim().to_string()
                }
            );
            if o.status.success() {
                // contained: what the layer wrote landed inside the daemon's root
                let snapshots = d
                    .root
                    .join(format!("io.containerd.snapshotter.v1.{snapshotter}"));
                assert!(
                    find(&snapshots, "planted"),
                    "{kind}/{snapshotter}: import succeeded but the layer's files are nowhere"
                );
            } else {
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(
                    err.contains("escape") || err.contains("outside"),
                    "{kind}/{snapshotter}: refused for another reason: {err}"
                );
            }
        }
    }
    // refused extractions leave no half-applied snapshot behind
    for snapshotter in ["overlayfs", "native"] {
        let ls = d.ctr_ok(&["snapshots", "--snapshotter", snapshotter, "ls"]);
        assert!(!ls.contains("extract-"), "{snapshotter}: {ls}");
    }
    // nothing is left mounted under the daemon's directories
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(d.dir.path().to_str().unwrap()),
        "mounts left behind:\n{mounts}"
    );
}

// ------------------------------------------ the daemon socket inside containers

#[test]
fn containers_reach_the_daemon_socket_only_when_it_is_mounted() {
    let d = Daemon::start();
    let n = names(&d);
    let (_dir, image) = import_into(&d, &n.a);
    let sock = d.socket.display().to_string();
    let probe = format!("if test -S {sock}; then echo present; else echo absent; fi");
    let out = d.ctr_ok(&[
        "-n",
        &n.a,
        "run",
        "--rm",
        &image,
        &format!("{}-1", n.id),
        "sh",
        "-c",
        &probe,
    ]);
    assert_eq!(out.trim(), "absent");
    // the directory alone, not the mounts below it (rootfs, snapshots)
    let dir = d.dir.path().display().to_string();
    let mount = format!("type=bind,src={dir},dst={dir},options=bind:ro");
    let out = d.ctr_ok(&[
        "-n",
        &n.a,
        "run",
        "--rm",
        "--mount",
        &mount,
        &image,
        &format!("{}-2", n.id),
        "sh",
        "-c",
        &probe,
    ]);
    assert_eq!(out.trim(), "present");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_holding_snapshots_is_listed_and_cannot_be_deleted() {
    let d = Daemon::start();
    let ns = names(&d).a;
    let ch = d.channel().await;
    let mut sc = SnapshotsClient::new(ch.clone());
    for snapshotter in ["overlayfs", "native"] {
        sc.prepare(req(
            &ns,
            PrepareSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: "only".into(),
                parent: String::new(),
                labels: HashMap::from([("containerd.io/gc.root".into(), "test".into())]),
            },
        ))
        .await
        .unwrap();
    }
    // the snapshot brought its namespace into being, as in containerd
    let ls = d.ctr_ok(&["namespaces", "ls", "-q"]);
    assert!(ls.lines().any(|l| l == ns), "{ls}");
    let o = d.ctr(&["namespaces", "rm", &ns]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "namespace with snapshots removed");
    assert!(
        err.contains("must be empty")
            && err.contains("snapshots on \"overlayfs\" snapshotter")
            && err.contains("snapshots on \"native\" snapshotter"),
        "{err}"
    );
    let ls = d.ctr_ok(&["namespaces", "ls", "-q"]);
    assert!(
        ls.lines().any(|l| l == ns),
        "namespace deleted under its snapshots: {ls}"
    );
    for snapshotter in ["overlayfs", "native"] {
        sc.remove(req(
            &ns,
            RemoveSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: "only".into(),
            },
        ))
        .await
        .unwrap();
    }
    d.ctr_ok(&["namespaces", "rm", &ns]);
    let ls = d.ctr_ok(&["namespaces", "ls", "-q"]);
    assert!(!ls.lines().any(|l| l == ns), "{ls}");
}
