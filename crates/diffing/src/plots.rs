//! PNG charts of a method's result tables, declared in the method config (`[[plots]]`), so a new method gets
//! plots without Rust changes: `line` (x against y, one line per `series`, optional ± `error` bars) and
//! `bars` (a horizontal bar per row: `label` and `y`). `filter` keeps the rows whose columns equal the given
//! values.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, bail, Context, Result};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
pub use diffsql_core::config::{PlotKind, PlotSpec};
use plotters::prelude::*;

const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; registering it cannot fail for a valid TTF.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// The column `name` of the table as text (any type, displayed) or numbers.
pub struct Columns<'a> {
    batches: &'a [RecordBatch],
    table: &'a str,
}

impl<'a> Columns<'a> {
    /// The columns of result table `table`.
    pub fn new(batches: &'a [RecordBatch], table: &'a str) -> Self {
        Self { batches, table }
    }

    fn array(&self, name: &str) -> Result<Vec<std::sync::Arc<dyn Array>>> {
        self.batches
            .iter()
            .map(|b| {
                b.column_by_name(name)
                    .cloned()
                    .ok_or_else(|| anyhow!("plot: table {} has no column {name}", self.table))
            })
            .collect()
    }

    pub fn numbers(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let mut out = Vec::new();
        for a in self.array(name)? {
            let a = cast(&a, &DataType::Float64).with_context(|| format!("plot: column {name} is not numeric"))?;
            out.extend(a.as_primitive::<Float64Type>().iter());
        }
        Ok(out)
    }

    pub fn text(&self, name: &str) -> Result<Vec<Option<String>>> {
        let mut out = Vec::new();
        for a in self.array(name)? {
            let a =
                cast(&a, &DataType::Utf8).with_context(|| format!("plot: column {name} cannot be shown as text"))?;
            out.extend(a.as_string::<i32>().iter().map(|v| v.map(str::to_string)));
        }
        Ok(out)
    }
}

/// Which rows `spec.filter` keeps.
pub fn keep(spec: &PlotSpec, cols: &Columns) -> Result<Vec<bool>> {
    let rows: usize = cols.batches.iter().map(|b| b.num_rows()).sum();
    let mut keep = vec![true; rows];
    for (col, want) in &spec.filter {
        let want = match want {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        for (k, v) in keep.iter_mut().zip(cols.text(col)?) {
            *k &= v.as_deref() == Some(want.as_str());
        }
    }
    Ok(keep)
}

/// Draws `spec` from the result table's batches into `dir`; returns the file name.
pub fn draw(spec: &PlotSpec, batches: &[RecordBatch], dir: &Path) -> Result<String> {
    register_font();
    let cols = Columns {
        batches,
        table: &spec.table,
    };
    let keep = keep(spec, &cols)?;
    let file = spec.file_name();
    let path = dir.join(&file);
    let tmp = dir.join(format!(".{file}.tmp.png"));
    match spec.kind {
        PlotKind::Line => line(spec, &cols, &keep, &tmp)?,
        PlotKind::Bars => bars(spec, &cols, &keep, &tmp)?,
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(file)
}

type Series = BTreeMap<String, Vec<(f64, f64, f64)>>;

fn line(spec: &PlotSpec, cols: &Columns, keep: &[bool], path: &Path) -> Result<()> {
    let xs = cols.numbers(&spec.x)?;
    let ys = cols.numbers(&spec.y)?;
    let errs = match &spec.error {
        Some(e) => cols.numbers(e)?,
        None => vec![None; xs.len()],
    };
    let names = match &spec.series {
        Some(s) => cols.text(s)?,
        None => vec![None; xs.len()],
    };
    let mut series: Series = BTreeMap::new();
    for i in 0..xs.len() {
        if let (true, Some(x), Some(y)) = (keep[i], xs[i], ys[i]) {
            let name = names[i].clone().unwrap_or_else(|| spec.y.clone());
            series.entry(name).or_default().push((x, y, errs[i].unwrap_or(0.0)));
        }
    }
    if series.is_empty() {
        bail!("plot {}: no rows to draw", spec.title);
    }
    for points in series.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let all = series.values().flatten();
    let (x0, x1) = all
        .clone()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all.fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1 - p.2), b.max(p.1 + p.2)));
    let pad = |a: f64, b: f64| if b > a { (b - a) * 0.05 } else { 1.0 };
    let (xp, yp) = (pad(x0, x1), pad(y0, y1));
    let y_bottom = y0.min(0.0) - yp;
    // The legend sits in headroom above every point and error bar, so it never covers data.
    let y_top = y1 + yp + legend_headroom(series.len(), y_bottom, y1 + yp);
    let integer_x = series.values().flatten().all(|p| p.0.fract() == 0.0);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&spec.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((x0 - xp)..(x1 + xp), y_bottom..y_top)
        .map_err(plot_err)?;
    let x_ticks = if integer_x {
        ((x1 - x0) as usize + 1).clamp(2, 12)
    } else {
        10
    };
    chart
        .configure_mesh()
        .x_labels(x_ticks)
        .x_label_formatter(&|v| tick_label(*v, integer_x))
        .x_desc(spec.x_label.clone().unwrap_or_else(|| spec.x.clone()))
        .y_desc(spec.y_label.clone().unwrap_or_else(|| spec.y.clone()))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if spec.error.is_some() {
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, color.filled(), 8)),
                )
                .map_err(plot_err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn bars(spec: &PlotSpec, cols: &Columns, keep: &[bool], path: &Path) -> Result<()> {
    let labels = cols.text(&spec.x)?;
    let ys = cols.numbers(&spec.y)?;
    let rows: Vec<(String, f64)> = (0..ys.len())
        .filter(|&i| keep[i])
        .filter_map(|i| Some((diffsql_model::data::token_text::quoted(labels[i].as_deref()?), ys[i]?)))
        .take(40)
        .collect();
    if rows.is_empty() {
        bail!("plot {}: no rows to draw", spec.title);
    }
    let max = rows.iter().map(|r| r.1).fold(f64::MIN, f64::max).max(0.0);
    let min = rows.iter().map(|r| r.1).fold(f64::MAX, f64::min).min(0.0);
    let n = rows.len();
    let root = BitMapBackend::new(path, (900, 120 + 22 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&spec.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(180)
        .build_cartesian_2d(min..(max + (max - min).max(1e-12) * 0.05), (0..n).into_segmented())
        .map_err(plot_err)?;
    let label_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => n
            .checked_sub(1 + *i)
            .and_then(|j| rows.get(j))
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&label_of)
        .x_desc(spec.y_label.clone().unwrap_or_else(|| spec.y.clone()))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    let color = Palette99::pick(0).to_rgba();
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            let y = n - 1 - i;
            Rectangle::new(
                [(0.0, SegmentValue::Exact(y)), (r.1, SegmentValue::Exact(y + 1))],
                color.filled(),
            )
        }))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The label of an axis tick: integer axes (layers, positions) label only whole numbers, so no tick reads
/// "layer 0.5"; other axes print up to three significant decimals.
pub fn tick_label(v: f64, integer_axis: bool) -> String {
    if integer_axis {
        if v.fract().abs() < 1e-9 {
            format!("{}", v.round() as i64)
        } else {
            String::new()
        }
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Extra room above the data, in y units, for a legend of `series` rows (about 22 px each in a ~450 px
/// tall plot area) between `y_bottom` and `y_top`.
pub fn legend_headroom(series: usize, y_bottom: f64, y_top: f64) -> f64 {
    let span = (y_top - y_bottom).max(1e-12);
    let fraction = (0.05 * series as f64 + 0.04).min(0.6);
    span * fraction / (1.0 - fraction)
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_axes_label_whole_numbers_only() {
        assert_eq!(tick_label(1.0, true), "1");
        assert_eq!(tick_label(0.5, true), "");
        assert_eq!(tick_label(-0.0, true), "0");
        assert_eq!(tick_label(1.25, false), "1.25");
        assert_eq!(tick_label(2.0, false), "2");
    }

    #[test]
    fn the_legend_gets_room_above_the_data() {
        // With n series the legend needs ~5% of the plot per row; the headroom gives at least that share of
        // the final axis span.
        for n in 1..6 {
            let (bottom, top) = (0.0, 10.0);
            let room = legend_headroom(n, bottom, top);
            let share = room / (top + room - bottom);
            assert!(share >= 0.05 * n as f64, "{n} series: {share}");
        }
    }

    #[test]
    fn a_line_chart_over_layers_draws() {
        use datafusion::arrow::array::{Float64Array, Int32Array, StringArray};
        use datafusion::arrow::datatypes::{Field, Schema};
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("layer", DataType::Int32, false),
            Field::new("y", DataType::Float64, false),
            Field::new("dataset", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                std::sync::Arc::new(Int32Array::from(vec![0, 1, 2, 3, 0, 1, 2, 3])),
                std::sync::Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 9.0, 1.5, 2.5, 3.5, 9.5])),
                std::sync::Arc::new(StringArray::from(vec!["a", "a", "a", "a", "b", "b", "b", "b"])),
            ],
        )
        .unwrap();
        let spec: PlotSpec = toml::from_str(
            r#"kind = "line"
               table = "t"
               title = "t"
               x = "layer"
               y = "y"
               series = "dataset""#,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = draw(&spec, &[batch], dir.path()).unwrap();
        assert!(std::fs::metadata(dir.path().join(file)).unwrap().len() > 1000);
    }
}
