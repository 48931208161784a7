//! Pluggable image archive formats (seed 001): an [`Importer`] and an
//! [`Exporter`] trait with implementations for OCI image layout v1 tars and
//! Docker `save` tars (import only).

mod exporter;
pub mod gojson;
pub mod gotar;
mod importer;

pub use exporter::{export_to_file, ExportImage, ExportProgress, Exporter, OciExporter};
pub use importer::{
    image_records, import_index, ArchiveImporter, Format, ImageRecord, ImportOptions,
    ImportProgress, Importer, RefNames,
};
