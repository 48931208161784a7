//! Walking an image's content graph: handlers, the skip/stop sentinels,
//! sequential [`walk`] and concurrent [`dispatch`], and the handler wrappers
//! (children, platform filtering, manifest limiting, GC labels) of
//! containerd's `images` package.

use crate::content::{LabelManager, Provider};
use crate::mediatypes::*;
use crate::spec::{read_index, read_manifest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use stevedore_types::platform::MatchPlatform;
use stevedore_types::{Descriptor, Error, Platform};

/// Why a handler did not return children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// Skip this descriptor and its descendants (containerd's `ErrSkipDesc`).
    SkipDesc,
    /// This descriptor is handled; stop the handler chain for it only
    /// (containerd's `ErrStopHandler`); its children still get walked.
    StopHandler,
    /// A real failure: the walk stops with it.
    Failed(Error),
}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        HandlerError::Failed(e)
    }
}

/// What a handler returns: the children to visit next.
pub type HandlerResult = Result<Vec<Descriptor>, HandlerError>;

/// Handles one descriptor of an image and returns its children to visit.
pub trait Handler {
    fn handle(&self, desc: &Descriptor) -> HandlerResult;
}

impl<F: Fn(&Descriptor) -> HandlerResult> Handler for F {
    fn handle(&self, desc: &Descriptor) -> HandlerResult {
        self(desc)
    }
}

impl Handler for Box<dyn Handler + '_> {
    fn handle(&self, desc: &Descriptor) -> HandlerResult {
        (**self).handle(desc)
    }
}

impl Handler for Box<dyn Handler + Send + Sync + '_> {
    fn handle(&self, desc: &Descriptor) -> HandlerResult {
        (**self).handle(desc)
    }
}

/// Runs handlers in sequence and concatenates their children; a handler
/// returning [`HandlerError::StopHandler`] ends the chain for that descriptor.
pub struct Handlers<H>(pub Vec<H>);

impl<H: Handler> Handler for Handlers<H> {
    fn handle(&self, desc: &Descriptor) -> HandlerResult {
        let mut children = Vec::new();
        for h in &self.0 {
            match h.handle(desc) {
                Ok(ch) => children.extend(ch),
                Err(HandlerError::StopHandler) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(children)
    }
}

fn unwrap_failure(e: HandlerError) -> Option<Error> {
    match e {
        HandlerError::Failed(e) => Some(e),
        // A stop outside a chain means "handled, no children".
        HandlerError::SkipDesc | HandlerError::StopHandler => None,
    }
}

/// Visit descriptors depth first, siblings in order, calling the handler on
/// each and descending into the children it returns.
pub fn walk(handler: &dyn Handler, descs: &[Descriptor]) -> Result<(), Error> {
    for desc in descs {
        match handler.handle(desc) {
            Ok(children) => {
                if !children.is_empty() {
                    walk(handler, &children)?;
                }
            }
            Err(e) => {
                if let Some(e) = unwrap_failure(e) {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Like [`walk`], but fails with NotFound ("image might be filtered out")
/// when no handler call returned any child (containerd's `WalkNotEmpty`).
pub fn walk_not_empty(handler: &dyn Handler, descs: &[Descriptor]) -> Result<(), Error> {
    let seen = std::cell::Cell::new(false);
    let h = |d: &Descriptor| {
        let ch = handler.handle(d)?;
        if !ch.is_empty() {
            seen.set(true);
        }
        Ok(ch)
    };
    walk(&h, descs)?;
    if !seen.get() {
        return Err(Error::not_found("image might be filtered out"));
    }
    Ok(())
}

/// A counting semaphore bounding concurrent handler calls in [`dispatch`].
pub struct Limiter {
    free: Mutex<usize>,
    cond: Condvar,
}

impl Limiter {
    pub fn new(n: usize) -> Self {
        Limiter {
            free: Mutex::new(n.max(1)),
            cond: Condvar::new(),
        }
    }
    fn acquire(&self) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.cond.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
    }
    fn release(&self) {
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cond.notify_one();
    }
}

/// Run the handler on the descriptors concurrently (siblings in parallel on
/// scoped threads), then on their children. At most `limiter`'s count of
/// handler calls run at once (no limit when None). The first failure cancels
/// the handlers not yet started and is returned.
pub fn dispatch<H: Handler + Sync>(
    handler: &H,
    limiter: Option<&Limiter>,
    descs: &[Descriptor],
) -> Result<(), Error> {
    let cancelled = AtomicBool::new(false);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    dispatch_inner(handler, limiter, descs, &cancelled, &first_err);
    match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn dispatch_inner<H: Handler + Sync>(
    handler: &H,
    limiter: Option<&Limiter>,
    descs: &[Descriptor],
    cancelled: &AtomicBool,
    first_err: &Mutex<Option<Error>>,
) {
    std::thread::scope(|s| {
        for desc in descs {
            if cancelled.load(Ordering::SeqCst) {
                return;
            }
            if let Some(l) = limiter {
                l.acquire();
            }
            s.spawn(move || {
                let res = if cancelled.load(Ordering::SeqCst) {
                    Ok(Vec::new())
                } else {
                    handler.handle(desc)
                };
                if let Some(l) = limiter {
                    l.release();
                }
                match res {
                    Ok(children) if !children.is_empty() => {
                        dispatch_inner(handler, limiter, &children, cancelled, first_err)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(e) = unwrap_failure(e) {
                            cancelled.store(true, Ordering::SeqCst);
                            let mut slot = first_err.lock().unwrap_or_else(|p| p.into_inner());
                            slot.get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
}

/// The immediate children of a manifest (config then layers) or an index
/// (its manifests); layers and configs have none. Unknown types have none.
pub fn children(provider: &dyn Provider, desc: &Descriptor) -> Result<Vec<Descriptor>, Error> {
    if is_manifest_type(&desc.media_type) {
        let m = read_manifest(provider, desc)?;
        let mut out = Vec::with_capacity(m.layers.len() + 1);
        out.push(m.config);
        out.extend(m.layers);
        return Ok(out);
    }
    if is_index_type(&desc.media_type) {
        return Ok(read_index(provider, desc)?.manifests);
    }
    Ok(Vec::new())
}

/// A handler returning [`children`] (containerd's `ChildrenHandler`).
pub fn children_handler(provider: &dyn Provider) -> impl Handler + Sync + '_ {
    move |d: &Descriptor| -> HandlerResult { Ok(children(provider, d)?) }
}

/// Keep only children without a platform or whose platform matches.
pub fn filter_platforms<'a, H: Handler + 'a>(
    inner: H,
    matcher: &'a dyn MatchPlatform,
) -> impl Handler + 'a {
    move |d: &Descriptor| -> HandlerResult {
        let children = inner.handle(d)?;
        Ok(children
            .into_iter()
            .filter(|c| c.platform.as_ref().is_none_or(|p| matcher.matches(p)))
            .collect())
    }
}

/// containerd's `MatchComparer.Less` in terms of ranks: matched before
/// unmatched, better rank first.
pub fn platform_less(matcher: &dyn MatchPlatform, a: &Platform, b: &Platform) -> bool {
    match (matcher.rank(a), matcher.rank(b)) {
        (Some(x), Some(y)) => x < y,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Order descriptors by platform preference, stable, platform-less last.
pub fn sort_by_platform(matcher: &dyn MatchPlatform, descs: &mut [Descriptor]) {
    descs.sort_by(|a, b| {
        use std::cmp::Ordering as O;
        let less = |x: &Descriptor, y: &Descriptor| match (&x.platform, &y.platform) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(p), Some(q)) => platform_less(matcher, p, q),
        };
        if less(a, b) {
            O::Less
        } else if less(b, a) {
            O::Greater
        } else {
            O::Equal
        }
    });
}

/// For indexes, order the children by platform preference and keep at most
/// `limit` (no limit when 0); NotFound when nothing is left to keep.
pub fn limit_manifests<'a, H: Handler + 'a>(
    inner: H,
    matcher: &'a dyn MatchPlatform,
    limit: usize,
) -> impl Handler + 'a {
    move |d: &Descriptor| -> HandlerResult {
        let mut children = inner.handle(d)?;
        if is_index_type(&d.media_type) {
            sort_by_platform(matcher, &mut children);
            if limit > 0 {
                if children.is_empty() {
                    return Err(Error::not_found(format!(
                        "no match for platform in manifest {}: not found",
                        d.digest
                    ))
                    .into());
                }
                children.truncate(limit);
            }
        }
        Ok(children)
    }
}

/// The GC reference label prefix for a child (containerd's `ChildGCLabels`).
pub fn child_gc_labels(desc: &Descriptor) -> Vec<String> {
    let mt = desc.media_type.as_str();
    let label = if is_known_config(mt) {
        "containerd.io/gc.ref.content.config"
    } else if is_manifest_type(mt) {
        "containerd.io/gc.ref.content.m."
    } else if is_layer_type(mt) {
        "containerd.io/gc.ref.content.l."
    } else {
        "containerd.io/gc.ref.content."
    };
    vec![label.to_string()]
}

/// [`child_gc_labels`] without layers (`ChildGCLabelsFilterLayers`), for
/// stores that keep layers alive through snapshots instead.
pub fn child_gc_labels_filter_layers(desc: &Descriptor) -> Vec<String> {
    if is_layer_type(&desc.media_type) {
        return Vec::new();
    }
    child_gc_labels(desc)
}

/// The labels a parent gets for its children: each label key gets the
/// child's index among the children with that key appended, except that a
/// key not ending in '.' keeps its bare form for its first child.
pub fn children_labels(children: &[Descriptor], label_map: &LabelMap) -> Vec<(String, String)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for ch in children {
        for key in label_map(ch) {
            let idx = counts.entry(key.clone()).or_insert(0);
            let k = if *idx > 0 || key.ends_with('.') {
                format!("{key}{idx}")
            } else {
                key.clone()
            };
            *idx += 1;
            out.push((k, ch.digest.to_string()));
        }
    }
    out
}

/// Maps a child to the GC label keys its parent should carry for it.
pub type LabelMap = dyn Fn(&Descriptor) -> Vec<String>;

/// Wrap a children-returning handler so the parent's content gets GC
/// reference labels to its children (containerd's `SetChildrenMappedLabels`;
/// `label_map` None means [`child_gc_labels`]).
pub fn set_children_labels<'a, H: Handler + 'a>(
    manager: &'a dyn LabelManager,
    inner: H,
    label_map: Option<&'a LabelMap>,
) -> impl Handler + 'a {
    move |d: &Descriptor| -> HandlerResult {
        let children = inner.handle(d)?;
        if !children.is_empty() {
            let labels = children_labels(&children, label_map.unwrap_or(&child_gc_labels));
            manager
                .set_labels(&d.digest, &labels)
                .map_err(|e| e.context(format!("set children labels on {}", d.digest)))?;
        }
        Ok(children)
    }
}
