//! `connrate.svg`: connection rate against published ports, one line per
//! variant (log scale on the port axis).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::{bed::Variant, results::Results};

fn color(v: Variant) -> RGBColor {
    match v {
        Variant::NoNat => RGBColor(110, 110, 110),
        Variant::Iptables => RGBColor(214, 39, 40),
        Variant::Nftables => RGBColor(255, 127, 14),
        Variant::Netpath => RGBColor(31, 119, 180),
        Variant::NetpathStack => RGBColor(148, 103, 189),
    }
}

pub fn conn_rate_svg(results: &Results, path: &Path) -> Result<()> {
    let lines: Vec<(Variant, Vec<(f64, f64)>)> = results
        .variants
        .iter()
        .map(|f| (f.variant, f.conn_rate.iter().map(|p| (p.ports as f64, p.per_sec.median)).collect()))
        .collect();
    let max_rate = lines.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.1)).fold(0.0, f64::max);
    let max_ports = lines.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.0)).fold(1.0, f64::max);
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Short TCP connections per second through a published port", ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((0.7f64..max_ports * 1.5).log_scale(), 0f64..(max_rate * 1.15).max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("published ports (log scale)")
            .y_desc("connections/s (median of rounds)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE)
            .draw()?;
        for (variant, pts) in &lines {
            let c = color(*variant);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                .label(variant.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}
