//! Tensor data from a checkpoint's bytes as they are stored: shared with the map where the
//! bytes are the device's values on their boundary, else copied.

use std::ops::Range;

use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::Dtype;

use crate::checkpoint::TensorRef;
use crate::checkpoint::mxfp4;

/// MXFP4 bytes as the 32-bit words the device holds (little-endian, four bytes each), shared
/// with the checkpoint's map where they start on a word boundary (as the release checkpoints'
/// do), else copied ([`mxfp4::pack_words`]).
pub(super) fn words_as_stored<const D: usize>(t: &TensorRef<'_>, shape: [usize; D]) -> TensorData {
    match t.bytes.as_ptr().cast::<i32>().is_aligned() {
        true => TensorData::from_bytes(t.shared_bytes(), shape, DType::I32),
        false => TensorData::new(mxfp4::pack_words(t.bytes), shape),
    }
}

/// Whether `t`'s bytes are values of `dtype` (bf16 or f32) as stored, on that dtype's boundary.
pub(super) fn stored_as(t: &TensorRef<'_>, dtype: DType) -> bool {
    let same = matches!(
        (t.dtype, dtype),
        (Dtype::BF16, DType::BF16) | (Dtype::F32, DType::F32)
    );
    same && (t.bytes.as_ptr() as usize).is_multiple_of(dtype.size())
}

/// Rows `rows` of `t` ([_, width], [`stored_as`] `dtype`), sharing the checkpoint's map.
pub(super) fn rows_as_stored(
    t: &TensorRef<'_>,
    rows: Range<usize>,
    width: usize,
    dtype: DType,
) -> TensorData {
    let size = width * dtype.size();
    let bytes = t.shared_range(rows.start * size..rows.end * size);
    TensorData::from_bytes(bytes, [rows.len(), width], dtype)
}

/// `data` on `device` in its own dtype (f32 stays f32, bf16 stays bf16), where
/// `Tensor::from_data` with a device alone would convert it to the device's default float.
pub(crate) fn tensor_as_given(data: TensorData, device: &Device) -> Tensor<2> {
    let dtype = data.dtype();
    Tensor::from_data(data, (device, dtype))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{AllocationProperty, Int};
    use safetensors::tensor::TensorView;

    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::checkpoint::reader::write_shard;

    #[test]
    fn mxfp4_words_are_shared_with_the_map_where_aligned_and_copied_where_not() {
        // Tensors of one dtype lie in name order from the data's start, which safetensors aligns
        // to 8 bytes: `a` at 0, `b` at 8, `c` at 11, off a word boundary.
        let dir = tempfile::tempdir().unwrap();
        let words: Vec<u8> = (10..18).collect();
        let views = [
            ("a", TensorView::new(Dtype::U8, vec![8], &words).unwrap()),
            (
                "b",
                TensorView::new(Dtype::U8, vec![3], &words[..3]).unwrap(),
            ),
            ("c", TensorView::new(Dtype::U8, vec![8], &words).unwrap()),
        ];
        safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        let expected = vec![0x0d0c_0b0a_i32, 0x1110_0f0e];
        let (aligned, unaligned) = (ckpt.tensor("a").unwrap(), ckpt.tensor("c").unwrap());
        assert!(
            !unaligned.bytes.as_ptr().cast::<i32>().is_aligned(),
            "the test's premise"
        );

        let shared = words_as_stored(&aligned, [2]);
        assert_eq!(shared.bytes().property(), AllocationProperty::File);
        assert_eq!(shared.try_to_vec::<i32>().unwrap(), expected);
        let copied = words_as_stored(&unaligned, [2]);
        assert_eq!(copied.bytes().property(), AllocationProperty::Native);
        assert_eq!(copied.try_to_vec::<i32>().unwrap(), expected);
        // On the device either way.
        for data in [shared, copied] {
            let tensor = Tensor::<1, Int>::from_data(data, &Device::flex());
            assert_eq!(
                tensor
                    .into_data()
                    .convert::<i32>()
                    .try_to_vec::<i32>()
                    .unwrap(),
                expected
            );
        }
    }

    #[test]
    fn embedding_rows_are_shared_with_the_map_where_stored_as_uploaded() {
        // `a` (bf16) at 0, `b` (f32) at 8, `u` (one byte) at 16, `c` (bf16) at 17.
        let bf16: Vec<u8> = [1.5f32, -2.0, 0.25, 3.0]
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let f32_bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let header = concat!(
            r#"{"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"#,
            r#""b":{"dtype":"F32","shape":[1,2],"data_offsets":[8,16]},"#,
            r#""u":{"dtype":"U8","shape":[1],"data_offsets":[16,17]},"#,
            r#""c":{"dtype":"BF16","shape":[2,2],"data_offsets":[17,25]}}"#,
        );
        let data = [&bf16[..], &f32_bytes, &[7], &bf16].concat();
        let dir = tempfile::tempdir().unwrap();
        write_shard(dir.path(), header, &data);
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        let (a, b, c) = (
            ckpt.tensor("a").unwrap(),
            ckpt.tensor("b").unwrap(),
            ckpt.tensor("c").unwrap(),
        );
        assert!(stored_as(&a, DType::BF16) && stored_as(&b, DType::F32));
        assert!(
            !stored_as(&a, DType::F32),
            "bf16 values do not go up as f32 in place"
        );
        assert!(!stored_as(&b, DType::BF16));
        assert!(!stored_as(&c, DType::BF16), "off a 2-byte boundary");

        let second_row = rows_as_stored(&a, 1..2, 2, DType::BF16);
        assert_eq!(second_row.bytes().property(), AllocationProperty::File);
        let piece = Tensor::<2>::from_data(second_row, (&Device::flex(), DType::BF16));
        assert_eq!(piece.dtype(), DType::BF16);
        let values = piece
            .cast(DType::F32)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(values, vec![0.25, 3.0]);
        let row = rows_as_stored(&b, 0..1, 2, DType::F32);
        assert_eq!(row.try_to_vec::<f32>().unwrap(), vec![1.5, -2.0]);
    }
}
