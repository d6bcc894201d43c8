//! The one place records are turned into bytes and back: a format-version byte
//! followed by bincode 2 (serde API, standard config). bincode is unmaintained
//! (RUSTSEC-2025-0141); postcard is the drop-in successor, and a new format
//! byte is how a later build would read both.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format byte written in front of every record.
pub const FORMAT_BINCODE_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("record has format {0}, this build reads format {FORMAT_BINCODE_V1}")]
    UnknownFormat(u8),
    #[error("cannot decode record: {0}")]
    Decode(String),
    #[error("cannot encode record: {0}")]
    Encode(String),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut bytes = vec![FORMAT_BINCODE_V1];
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&format, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != FORMAT_BINCODE_V1 {
        return Err(CodecError::UnknownFormat(format));
    }
    let (value, _) =
        bincode::serde::decode_from_slice(body, bincode::config::standard()).map_err(|error| {
            CodecError::Decode(match error {
                // A value the record's own type refused (an unknown status
                // name): its message, not bincode's debug wrapping of it.
                bincode::error::DecodeError::OtherString(message) => message,
                // bincode's own text for these is a debug dump.
                bincode::error::DecodeError::UnexpectedEnd { .. } => {
                    "the record ends early (written with another layout?)".to_string()
                }
                other => other.to_string(),
            })
        })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        count: u64,
        ratio: Option<f64>,
    }

    #[test]
    fn round_trips_with_a_format_byte() {
        let sample = Sample {
            name: "x".into(),
            count: 7,
            ratio: Some(0.5),
        };
        let bytes = encode(&sample).unwrap();
        assert_eq!(bytes[0], FORMAT_BINCODE_V1);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample);
    }

    #[test]
    fn unknown_formats_and_garbage_are_errors_not_panics() {
        assert!(matches!(
            decode::<Sample>(&[9, 1, 2]),
            Err(CodecError::UnknownFormat(9))
        ));
        assert!(matches!(decode::<Sample>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<Sample>(&[1, 255, 255]),
            Err(CodecError::Decode(_))
        ));
    }
}
