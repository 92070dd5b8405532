//! Summary statistics of a set of measurements: min, median, p90, p99,
//! max and mean, with percentiles interpolated linearly between ranks (the
//! usual "type 7" definition, as numpy's default).

/// A summary of measurements.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Count.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The `q` quantile (0..=1) of sorted `v`.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Summarizes `values`; `None` when there are none (or any is NaN).
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Some(Summary {
        n: v.len(),
        min: v[0],
        p50: quantile(&v, 0.5),
        p90: quantile(&v, 0.9),
        p99: quantile(&v, 0.99),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_inputs_known_outputs() -> Result<(), &'static str> {
        let s = summarize(&[10.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0]).ok_or("none")?;
        assert_eq!((s.n, s.min, s.max, s.mean), (10, 1.0, 10.0, 5.5));
        assert_eq!(s.p50, 5.5);
        assert!((s.p90 - 9.1).abs() < 1e-9);
        assert!((s.p99 - 9.91).abs() < 1e-9);
        let one = summarize(&[4.0]).ok_or("none")?;
        assert_eq!((one.p50, one.p99), (4.0, 4.0));
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[1.0, f64::NAN]).is_none());
        Ok(())
    }
}
