//! Data handling for peerless: dataset readers (IDX, CIFAR-10, synthetic), batch
//! transforms, peer partitioning, the shard object format, object stores (local directory
//! and S3) and the split/manifest layer that ties them together. Pure Rust, no tensors:
//! batches come out as contiguous `f32` NCHW buffers.

pub mod dataset;
pub mod formats;
pub mod manifest;
pub mod partition;
pub mod shard;
pub mod split;
pub mod store;
pub mod transform;

pub use dataset::{Dataset, DatasetKind, ImageShape, Split};
pub use formats::{DatasetError, default_data_dir, load};
pub use manifest::Manifest;
pub use partition::{DEFAULT_SEED, Partition, PartitionError};
pub use shard::ShardError;
pub use split::{SplitConfig, SplitError, SplitReader, split};
pub use store::{ObjectStore, S3Options, StoreError, StoreOptions, open_store};
pub use transform::{Batch, Normalization, Transform, TransformError, TransformSpec};
