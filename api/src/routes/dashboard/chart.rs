//! The overview's chart: credits granted and used per day, as inline SVG drawn on the
//! server (no script, nothing from a CDN; the page's CSP allows neither). Bars in pairs,
//! scaled to the busiest day, with the scale and the first and last dates as text, and a
//! description for screen readers.

use std::fmt::Write;

use common::db::customers::CreditDay;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;
/// Room for the dates under the bars.
const AXIS: f64 = 18.0;

pub fn credits_svg(days: &[CreditDay]) -> String {
    let peak = days.iter().map(|d| d.granted.max(d.used)).max().unwrap_or(0).max(1) as f64;
    let slot = WIDTH / days.len().max(1) as f64;
    let bar = (slot / 2.0 - 1.0).max(1.0);
    let plot = HEIGHT - AXIS;
    let (granted, used): (i64, i64) = days.iter().fold((0, 0), |(g, u), d| (g + d.granted, u + d.used));
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">Credits per day, last {n} days</title><desc id="chart-desc">{granted} credits granted and {used} used in the last {n} days; the busiest day moved {peak} credits.</desc>"##,
        n = days.len(),
        peak = peak as i64,
    );
    for (i, day) in days.iter().enumerate() {
        let x = i as f64 * slot;
        for (offset, value, class) in [(0.0, day.granted, "granted"), (bar + 1.0, day.used, "used")] {
            if value > 0 {
                let h = (value as f64 / peak * (plot - 4.0)).max(1.0);
                let _ = write!(
                    svg,
                    r#"<rect class="{class}" x="{:.1}" y="{:.1}" width="{bar:.1}" height="{h:.1}"><title>{} {class}: {value}</title></rect>"#,
                    x + offset,
                    plot - h,
                    day.day,
                );
            }
        }
    }
    let _ = write!(
        svg,
        r#"<line x1="0" y1="{plot}" x2="{WIDTH}" y2="{plot}" class="axis"/><text x="0" y="10" class="label">{peak}</text>"#,
        peak = peak as i64,
    );
    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        let _ = write!(
            svg,
            r#"<text x="0" y="{HEIGHT}" class="label">{}</text><text x="{WIDTH}" y="{HEIGHT}" text-anchor="end" class="label">{}</text>"#,
            first.day, last.day,
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: u32, granted: i64, used: i64) -> CreditDay {
        CreditDay { day: chrono::NaiveDate::from_ymd_opt(2026, 11, n).unwrap(), granted, used }
    }

    #[test]
    fn bars_scale_to_the_busiest_day_and_empty_days_draw_nothing() {
        let svg = credits_svg(&[day(1, 60, 0), day(2, 0, 0), day(3, 0, 30)]);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains(r#"class="granted" x="0.0" y="4.0""#), "the peak bar is full height: {svg}");
        assert!(svg.contains("2026-11-03 used: 30"));
        assert!(svg.contains("60 credits granted and 30 used in the last 3 days"));
    }

    #[test]
    fn no_days_or_no_movement_still_draws_a_chart() {
        assert!(credits_svg(&[]).ends_with("</svg>"));
        assert!(!credits_svg(&[day(1, 0, 0)]).contains("<rect"));
    }
}
