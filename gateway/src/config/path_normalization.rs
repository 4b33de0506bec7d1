//! How request paths are normalized before routing and authorization: Istio's
//! `meshConfig.pathNormalization` modes, as settings name them. What each mode does to a path
//! is the business of `policy::path`, which re-exports this type.

use std::fmt;
use std::str::FromStr;

/// How request paths are normalized, by Istio's `meshConfig.pathNormalization` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PathNormalization {
    None,
    Base,
    #[default]
    MergeSlashes,
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    pub const ALL: [PathNormalization; 4] = [
        PathNormalization::None,
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ];

    /// Istio's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PathNormalization::None => "NONE",
            PathNormalization::Base => "BASE",
            PathNormalization::MergeSlashes => "MERGE_SLASHES",
            PathNormalization::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        }
    }

    /// Whether `//` is merged into `/`.
    pub(crate) fn merges(self) -> bool {
        matches!(
            self,
            PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
        )
    }
}

impl fmt::Display for PathNormalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is not one of Istio's.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a path normalization mode (NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)"
)]
pub struct UnknownMode(String);

impl FromStr for PathNormalization {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::PathNormalization;

    #[test]
    fn modes_parse_by_istio_name() {
        for mode in PathNormalization::ALL {
            assert_eq!(mode.as_str().parse::<PathNormalization>().ok(), Some(mode));
        }
        assert_eq!(
            "merge_slashes".parse::<PathNormalization>().ok(),
            Some(PathNormalization::MergeSlashes)
        );
        let e = "DECODE".parse::<PathNormalization>().unwrap_err();
        assert!(e.to_string().contains("MERGE_SLASHES"), "{e}");
        assert_eq!(
            PathNormalization::default(),
            PathNormalization::MergeSlashes
        );
    }
}
