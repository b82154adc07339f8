//! Dataset readers on small files written here in the real formats, their error cases, and
//! the real Fashion-MNIST files when the Debian package is installed.

use std::io::Write;
use std::path::{Path, PathBuf};

use peerless_data::formats::{DatasetError, cifar, idx};
use peerless_data::{DatasetKind, ImageShape, Split, load};

fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for d in [count, rows, cols] {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Three 2x3 images with pixels 0..18 and labels 7, 0, 9.
fn write_small_idx(dir: &Path, split: Split, gz_images: bool, gz_labels: bool) {
    let (images, labels) = idx::file_names(split);
    let img = idx_images(3, 2, 3, &(0..18).collect::<Vec<u8>>());
    let lab = idx_labels(&[7, 0, 9]);
    if gz_images {
        write(dir, &format!("{images}.gz"), &gz(&img));
    } else {
        write(dir, images, &img);
    }
    if gz_labels {
        write(dir, &format!("{labels}.gz"), &gz(&lab));
    } else {
        write(dir, labels, &lab);
    }
}

#[test]
fn idx_reads_raw_and_gzipped_files() {
    for (gi, gl) in [(false, false), (true, false), (false, true), (true, true)] {
        let dir = tempfile::tempdir().unwrap();
        write_small_idx(dir.path(), Split::Test, gi, gl);
        let d = load(DatasetKind::Mnist, Some(dir.path()), Split::Test).unwrap();
        assert_eq!(d.kind(), DatasetKind::Mnist);
        assert_eq!(d.shape(), ImageShape::new(1, 2, 3));
        assert_eq!(d.len(), 3);
        assert_eq!(d.num_classes(), 10);
        assert_eq!(d.labels(), &[7, 0, 9]);
        assert_eq!(d.image(1).unwrap(), &[6, 7, 8, 9, 10, 11]);
        assert_eq!(d.pixels(), (0..18).collect::<Vec<u8>>().as_slice());
    }
}

#[test]
fn missing_idx_files_are_listed_with_how_to_get_them() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(DatasetKind::FashionMnist, Some(dir.path()), Split::Train)
        .unwrap_err()
        .to_string();
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
        let p = dir.path().join(name);
        assert!(err.contains(&p.display().to_string()), "{err}");
        assert!(err.contains(&format!("{name}.gz")), "{err}");
    }
    assert!(
        err.contains("apt-get install dataset-fashion-mnist"),
        "{err}"
    );
    assert!(err.contains("--data-dir"), "{err}");

    // Only the labels missing: only they are listed.
    let (images, labels) = idx::file_names(Split::Train);
    write(dir.path(), images, &idx_images(1, 1, 1, &[0]));
    let err = load(DatasetKind::Mnist, Some(dir.path()), Split::Train).unwrap_err();
    match &err {
        DatasetError::Missing { missing, hint, .. } => {
            assert_eq!(missing.len(), 1, "{missing:?}");
            assert!(missing[0].contains(labels));
            assert!(hint.contains("./data/mnist"), "{hint}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn default_directories_are_used_and_named() {
    let err = load(DatasetKind::Cifar10, None, Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data/cifar-10-batches-bin/test_batch.bin"),
        "{err}"
    );
    assert!(err.contains("cifar-10-binary.tar.gz"), "{err}");
    assert_eq!(
        peerless_data::default_data_dir(DatasetKind::FashionMnist).unwrap(),
        Path::new("/usr/share/datasets/fashion-mnist")
    );
    let synthetic = load(DatasetKind::Synthetic, None, Split::Test).unwrap();
    assert_eq!(synthetic.len(), 1000);
}

#[test]
fn truncated_idx_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_small_idx(dir.path(), Split::Train, false, false);
    let (images, _) = idx::file_names(Split::Train);
    let full = idx_images(3, 2, 3, &(0..18).collect::<Vec<u8>>());
    let path = write(dir.path(), images, &full[..full.len() - 1]);
    let err = load(DatasetKind::Mnist, Some(dir.path()), Split::Train).unwrap_err();
    assert!(
        matches!(
            &err,
            DatasetError::Truncated {
                expected: 34,
                found: 33,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    // Header cut short.
    write(dir.path(), images, &full[..6]);
    let err = load(DatasetKind::Mnist, Some(dir.path()), Split::Train).unwrap_err();
    assert!(matches!(err, DatasetError::Truncated { .. }), "{err}");

    // A cut gzip stream.
    std::fs::remove_file(&path).unwrap();
    let z = gz(&full);
    let gz_path = write(dir.path(), &format!("{images}.gz"), &z[..z.len() / 2]);
    let err = load(DatasetKind::Mnist, Some(dir.path()), Split::Train).unwrap_err();
    assert!(matches!(err, DatasetError::Gzip { .. }), "{err}");
    assert!(
        err.to_string().contains(&gz_path.display().to_string()),
        "{err}"
    );

    // Extra bytes.
    std::fs::remove_file(&gz_path).unwrap();
    let mut long = full.clone();
    long.push(1);
    write(dir.path(), images, &long);
    let err = load(DatasetKind::Mnist, Some(dir.path()), Split::Train).unwrap_err();
    assert!(
        matches!(err, DatasetError::TrailingBytes { extra: 1, .. }),
        "{err}"
    );
}

#[test]
fn bad_magic_mismatched_counts_and_bad_labels_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = idx::file_names(Split::Train);
    // Labels file where the images file should be.
    let path = write(dir.path(), images, &idx_labels(&[1, 2]));
    write(dir.path(), labels, &idx_labels(&[1, 2]));
    let err = load(DatasetKind::Mnist, Some(dir.path()), Split::Train).unwrap_err();
    assert!(
        matches!(
            &err,
            DatasetError::BadMagic {
                expected: 0x803,
                found: 0x801,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    write(dir.path(), images, &idx_images(3, 1, 1, &[0, 1, 2]));
    let err = load(DatasetKind::Mnist, Some(dir.path()), Split::Train).unwrap_err();
    assert!(
        matches!(
            err,
            DatasetError::CountMismatch {
                images: 3,
                labels: 2,
                ..
            }
        ),
        "{err}"
    );

    write(dir.path(), labels, &idx_labels(&[1, 10, 2]));
    let err = load(DatasetKind::Mnist, Some(dir.path()), Split::Train).unwrap_err();
    assert!(
        matches!(
            err,
            DatasetError::BadLabel {
                record: 1,
                label: 10,
                ..
            }
        ),
        "{err}"
    );

    write(dir.path(), images, &idx_images(3, 0, 1, &[]));
    let err = load(DatasetKind::Mnist, Some(dir.path()), Split::Train).unwrap_err();
    assert!(matches!(err, DatasetError::BadDimensions { .. }), "{err}");
}

/// `n` CIFAR records; record `i` has label `(first + i) % 10` and pixel `j` = `(first + i + j) % 256`.
fn cifar_records(first: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(((first + i) % 10) as u8);
        out.extend((0..3072).map(|j| ((first + i + j) % 256) as u8));
    }
    out
}

#[test]
fn cifar_reads_train_batches_in_order_and_test_batch() {
    let dir = tempfile::tempdir().unwrap();
    for b in 1..=5 {
        write(
            dir.path(),
            &format!("data_batch_{b}.bin"),
            &cifar_records((b - 1) * 2, 2),
        );
    }
    write(dir.path(), "test_batch.bin", &gz(&cifar_records(100, 3)));
    let train = load(DatasetKind::Cifar10, Some(dir.path()), Split::Train).unwrap();
    assert_eq!(train.len(), 10);
    assert_eq!(train.shape(), ImageShape::new(3, 32, 32));
    assert_eq!(train.labels(), &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let img = train.image(7).unwrap();
    // Red plane first, then green (offset 1024), then blue (offset 2048).
    assert_eq!(img[0], 7);
    assert_eq!(img[1024], ((7 + 1024) % 256) as u8);
    assert_eq!(img[3071], ((7 + 3071) % 256) as u8);
    let test = load(DatasetKind::Cifar10, Some(dir.path()), Split::Test).unwrap();
    assert_eq!(test.labels(), &[0, 1, 2]);
    assert_eq!(test.image(2).unwrap()[5], 107);
}

#[test]
fn cifar_errors_name_the_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "data_batch_1.bin", &cifar_records(0, 1));
    let err = load(DatasetKind::Cifar10, Some(dir.path()), Split::Train).unwrap_err();
    match &err {
        DatasetError::Missing { missing, .. } => {
            assert_eq!(missing.len(), 4, "{missing:?}");
            assert!(missing[0].ends_with("data_batch_2.bin"));
        }
        other => panic!("unexpected {other}"),
    }
    let mut records = cifar_records(0, 2);
    records.pop();
    let path = write(dir.path(), "test_batch.bin", &records);
    let err = load(DatasetKind::Cifar10, Some(dir.path()), Split::Test).unwrap_err();
    assert!(
        matches!(err, DatasetError::CifarSize { len: 6145, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    let mut records = cifar_records(0, 2);
    records[cifar::RECORD_LEN] = 12;
    write(dir.path(), "test_batch.bin", &records);
    let err = load(DatasetKind::Cifar10, Some(dir.path()), Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DatasetError::BadLabel {
                record: 1,
                label: 12,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn real_fashion_mnist_if_installed() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.join("train-images-idx3-ubyte.gz").is_file() {
        println!(
            "note: skipping the real Fashion-MNIST check: {} is absent (apt-get install dataset-fashion-mnist)",
            dir.display()
        );
        return;
    }
    let train = load(DatasetKind::FashionMnist, None, Split::Train).unwrap();
    let test = load(DatasetKind::FashionMnist, None, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.shape(), ImageShape::new(1, 28, 28));
    assert_eq!(train.class_counts(), vec![6000; 10]);
    assert_eq!(test.class_counts(), vec![1000; 10]);
    let mean = train.pixels().iter().map(|&p| u64::from(p)).sum::<u64>() as f64
        / train.pixels().len() as f64
        / 255.0;
    // The published normalisation mean of Fashion-MNIST.
    assert!((mean - 0.2860).abs() < 0.0005, "mean {mean}");
}
