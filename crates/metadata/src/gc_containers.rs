//! Containers in the GC graph: every container record is a root that holds
//! its snapshot (`<snapshotter>/<snapshot key>`), its image's target content
//! when the image record exists, and whatever its labels reference — so a
//! running container's rootfs is never collected.

use crate::containers::Container;
use crate::db_err;
use crate::gc::{content_node, label_refs, GcSource, Node, SNAPSHOT};
use crate::images::IMAGES;
use crate::records::for_each_record;
use redb::ReadableTable;
use std::time::SystemTime;
use stevedore_types::Result;

pub(crate) struct ContainerSource;

impl GcSource for ContainerSource {
    fn roots(
        &self,
        tx: &redb::WriteTransaction,
        _now: SystemTime,
        emit: &mut dyn FnMut(Node),
    ) -> Result<()> {
        let images = tx
            .open_table(IMAGES)
            .map_err(|e| db_err("open images", e))?;
        for_each_record(tx, |ns, c: Container| {
            if !c.snapshotter.is_empty() && !c.snapshot_key.is_empty() {
                emit(Node::new(
                    SNAPSHOT,
                    ns,
                    format!("{}/{}", c.snapshotter, c.snapshot_key),
                ));
            }
            if !c.image.is_empty() {
                if let Some(img) = images
                    .get((ns, c.image.as_str()))
                    .map_err(|e| db_err("get image", e))?
                {
                    if let Ok(img) = serde_json::from_slice::<crate::images::Image>(img.value()) {
                        emit(content_node(ns, &img.target.digest));
                    }
                }
            }
            label_refs(ns, &c.labels, emit);
            Ok(())
        })
    }
}
