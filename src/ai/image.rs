//! RGB images in and out of the AI pipelines: PNG decode with a pixel limit checked
//! before any pixel is decoded, PNG encode, and the planar float layout models take.

use super::AiError;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: u32, height: u32) -> Self {
        RgbImage {
            width,
            height,
            pixels: vec![0; width as usize * height as usize * 3],
        }
    }

    /// Pixel count (what Livepeer bills an upscale by).
    pub fn area(&self) -> u64 {
        self.width as u64 * self.height as u64
    }
}

/// A `[3, h, w]` float image in 0–1, what the super-resolution models take and give.
#[derive(Clone, Debug, PartialEq)]
pub struct Planar {
    pub width: u32,
    pub height: u32,
    pub data: Vec<f32>,
}

impl Planar {
    pub fn from_rgb(img: &RgbImage) -> Planar {
        let plane = img.area() as usize;
        let mut data = vec![0f32; plane * 3];
        for (i, px) in img.pixels.chunks_exact(3).enumerate() {
            data[i] = px[0] as f32 / 255.0;
            data[plane + i] = px[1] as f32 / 255.0;
            data[2 * plane + i] = px[2] as f32 / 255.0;
        }
        Planar {
            width: img.width,
            height: img.height,
            data,
        }
    }

    /// Rounds to 8 bits, clamping the model's overshoot.
    pub fn to_rgb(&self) -> RgbImage {
        let plane = self.width as usize * self.height as usize;
        let mut out = RgbImage::new(self.width, self.height);
        let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        for (i, px) in out.pixels.chunks_exact_mut(3).enumerate() {
            px[0] = q(self.data[i]);
            px[1] = q(self.data[plane + i]);
            px[2] = q(self.data[2 * plane + i]);
        }
        out
    }
}

/// The dimensions in a PNG header, without decoding anything.
pub fn png_dimensions(bytes: &[u8]) -> Result<(u32, u32), AiError> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().map_err(not_png)?;
    let info = reader.info();
    Ok((info.width, info.height))
}

fn not_png(e: png::DecodingError) -> AiError {
    AiError::BadInput(format!(
        "the input is not a readable PNG image ({e}); send a PNG"
    ))
}

/// Decodes a PNG (any bit depth, palette, grey or alpha) to 8-bit RGB, refusing images
/// above `max_pixels` before their data is inflated. Alpha is dropped (composited on black
/// by the model's view of it: the colour channels are kept as they are).
pub fn decode_png(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, AiError> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(not_png)?;
    let (w, h) = (reader.info().width, reader.info().height);
    let area = w as u64 * h as u64;
    if area == 0 {
        return Err(AiError::BadInput("the image is empty (0 pixels)".into()));
    }
    if area > max_pixels {
        return Err(AiError::TooLarge {
            width: w,
            height: h,
            max_pixels,
        });
    }
    let size = reader.output_buffer_size().ok_or_else(|| {
        AiError::BadInput(format!("the PNG's {w}x{h} frame does not fit in memory"))
    })?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(not_png)?;
    buf.truncate(frame.buffer_size());
    let (color, _) = reader.output_color_type();
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(AiError::BadInput(
                "the PNG palette could not be expanded".into(),
            ))
        }
    };
    let stride = frame.line_size;
    let mut out = RgbImage::new(w, h);
    for y in 0..h as usize {
        let row = &buf[y * stride..y * stride + w as usize * channels];
        let dst = &mut out.pixels[y * w as usize * 3..(y + 1) * w as usize * 3];
        for (x, px) in row.chunks_exact(channels).enumerate() {
            let (r, g, b) = if channels < 3 {
                (px[0], px[0], px[0])
            } else {
                (px[0], px[1], px[2])
            };
            dst[x * 3] = r;
            dst[x * 3 + 1] = g;
            dst[x * 3 + 2] = b;
        }
    }
    Ok(out)
}

/// Encodes an RGB PNG (fast compression: these leave the machine at once).
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, AiError> {
    let mut out = Vec::with_capacity(img.pixels.len() / 2);
    let mut enc = png::Encoder::new(&mut out, img.width, img.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut w = enc
        .write_header()
        .map_err(|e| AiError::Internal(format!("PNG encode: {e}")))?;
    w.write_image_data(&img.pixels)
        .map_err(|e| AiError::Internal(format!("PNG encode: {e}")))?;
    w.finish()
        .map_err(|e| AiError::Internal(format!("PNG encode: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for (i, px) in img.pixels.chunks_exact_mut(3).enumerate() {
            let (x, y) = (i as u32 % w, i as u32 / w);
            px.copy_from_slice(&[(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8]);
        }
        img
    }

    #[test]
    fn png_round_trip_is_lossless() {
        let img = gradient(37, 21);
        let bytes = encode_png(&img).unwrap();
        assert_eq!(png_dimensions(&bytes).unwrap(), (37, 21));
        assert_eq!(decode_png(&bytes, 1 << 20).unwrap(), img);
    }

    #[test]
    fn too_many_pixels_is_refused_before_decoding() {
        let bytes = encode_png(&gradient(40, 30)).unwrap();
        match decode_png(&bytes, 1199) {
            Err(AiError::TooLarge {
                width: 40,
                height: 30,
                max_pixels: 1199,
            }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(decode_png(&bytes, 1200).is_ok());
    }

    #[test]
    fn non_png_bytes_are_bad_input_with_a_fix() {
        let err = decode_png(b"GIF89a not a png", 1 << 20).unwrap_err();
        assert!(matches!(err, AiError::BadInput(_)), "{err:?}");
        assert!(err.to_string().contains("send a PNG"), "{err}");
    }

    #[test]
    fn planar_round_trip_quantises_back_exactly() {
        let img = gradient(9, 4);
        let p = Planar::from_rgb(&img);
        assert_eq!(p.data.len(), 9 * 4 * 3);
        assert_eq!(p.to_rgb(), img);
    }
}
