//! Writes the output archive: both masks and, when asked for, the explanation outputs.

use std::io::Cursor;

use ndarray::{Array3, Array4, arr0};
use ndarray_npy::{NpzWriter, WriteNpzError};

/// Contents of the output archive.
pub struct MaskArchive<'a> {
    /// 2-D branch mask, uint8 (H, W, D), 1 for thrombus.
    pub pred_2d: &'a Array3<u8>,
    /// 3-D branch mask, uint8 (H, W, D), 1 for thrombus.
    pub pred_3d: &'a Array3<u8>,
    /// Logits of both branches and the two 3-D scores, present when explain is on.
    pub explain: Option<ExplainArrays<'a>>,
}

/// Explanation outputs, written only when a job requests them.
pub struct ExplainArrays<'a> {
    /// Averaged 2-D logits, float32 (2, H, W, D).
    pub logits_2d: &'a Array4<f32>,
    /// Averaged 3-D logits, float32 (2, H, W, D).
    pub logits_3d: &'a Array4<f32>,
    /// Mean softmax probability of the thrombus class over the 3-D logits.
    pub thrombus_probability: f32,
    /// Mean over voxels of the larger softmax probability of the 3-D logits.
    pub confidence: f32,
}

/// Encodes the archive as deflate-compressed `.npz` bytes.
pub fn encode_masks(archive: &MaskArchive<'_>) -> Result<Vec<u8>, WriteNpzError> {
    let mut writer = NpzWriter::new_compressed(Cursor::new(Vec::new()));
    writer.add_array("pred_2d", archive.pred_2d)?;
    writer.add_array("pred_3d", archive.pred_3d)?;

    if let Some(explain) = &archive.explain {
        writer.add_array("logits_2d", explain.logits_2d)?;
        writer.add_array("logits_3d", explain.logits_3d)?;
        writer.add_array("thrombus_probability", &arr0(explain.thrombus_probability))?;
        writer.add_array("confidence", &arr0(explain.confidence))?;
    }

    Ok(writer.finish()?.into_inner())
}
