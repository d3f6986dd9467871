//! The charts a method config declares (`[[plots]]`): plain settings, drawn by `diffsql-diffing` into PNGs and
//! by the dashboard in the browser.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a chart draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlotKind {
    /// x against y, one line per `series`, optional ± `error` bars.
    Line,
    /// A horizontal bar per row: label (`x`) and `y`.
    Bars,
}

impl PlotKind {
    /// The name in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Line => "line",
            Self::Bars => "bars",
        }
    }
}

/// One chart of a method config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlotSpec {
    pub kind: PlotKind,
    /// The result table (query file name without its order number).
    pub table: String,
    pub title: String,
    /// Output file name without extension (default: the table name and y column).
    #[serde(default)]
    pub name: Option<String>,
    /// x column (line) or label column (bars).
    pub x: String,
    pub y: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub series: Option<String>,
    #[serde(default)]
    pub filter: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub x_label: Option<String>,
    #[serde(default)]
    pub y_label: Option<String>,
}

impl PlotSpec {
    pub fn file_name(&self) -> String {
        format!(
            "{}.png",
            self.name
                .clone()
                .unwrap_or_else(|| format!("{}_{}", self.table, self.y))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_kind_is_an_error_naming_the_choices() {
        let e = toml::from_str::<PlotSpec>("kind = \"pie\"\ntable = \"t\"\ntitle = \"t\"\nx = \"a\"\ny = \"b\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pie") && e.contains("line") && e.contains("bars"), "{e}");
    }
}
