//! Order statistics over repeated measurements, and paired ratios between subjects with
//! their confidence intervals.

/// Summary of a sample: median, 99th percentile (nearest rank), min, max.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

/// Summarises `values`; `None` if there are none.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
    Some(Summary { n, median, p99: v[rank - 1], min: v[0], max: v[n - 1] })
}

/// Two-sided 95% quantiles of Student's t distribution, by degrees of freedom (the
/// textbook table); between rows the smaller number of degrees of freedom is used, which
/// gives a wider (conservative) interval.
const T_975: &[(usize, f64)] = &[
    (1, 12.706),
    (2, 4.303),
    (3, 3.182),
    (4, 2.776),
    (5, 2.571),
    (6, 2.447),
    (7, 2.365),
    (8, 2.306),
    (9, 2.262),
    (10, 2.228),
    (11, 2.201),
    (12, 2.179),
    (13, 2.160),
    (14, 2.145),
    (15, 2.131),
    (16, 2.120),
    (17, 2.110),
    (18, 2.101),
    (19, 2.093),
    (20, 2.086),
    (21, 2.080),
    (22, 2.074),
    (23, 2.069),
    (24, 2.064),
    (25, 2.060),
    (26, 2.056),
    (27, 2.052),
    (28, 2.048),
    (29, 2.045),
    (30, 2.042),
    (40, 2.021),
    (60, 2.000),
    (120, 1.980),
    (usize::MAX, 1.960),
];

/// The 97.5% quantile of Student's t with `df` degrees of freedom (`df` ≥ 1).
pub fn t_975(df: usize) -> f64 {
    T_975.iter().rev().find(|&&(d, _)| d <= df).map_or(f64::INFINITY, |&(_, t)| t)
}

/// A ratio between two subjects from rounds run side by side: round i of both ran under
/// the same conditions, so each round gives one ratio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairedRatio {
    /// Rounds with a positive value for both subjects.
    pub n: usize,
    /// The geometric mean of the per-round ratios.
    pub ratio: f64,
    /// The 95% confidence interval of `ratio` (`None` with fewer than 2 rounds).
    pub interval: Option<(f64, f64)>,
    /// Rounds whose ratio lies beyond 1.5 interquartile ranges of the quartiles (counted, kept).
    pub outliers: usize,
}

/// The paired ratio `num[i] / den[i]` over rounds: a t interval on the logarithms of the
/// per-round ratios (mean ± t(0.975, n−1)·s/√n), turned back into ratios, so that
/// num/den and den/num get the same interval, inverted. `None` without a usable round.
pub fn paired_ratio(num: &[f64], den: &[f64]) -> Option<PairedRatio> {
    let ratios: Vec<f64> = num
        .iter()
        .zip(den)
        .filter(|&(&a, &b)| a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite())
        .map(|(a, b)| a / b)
        .collect();
    let n = ratios.len();
    if n == 0 {
        return None;
    }
    let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
    let mean = logs.iter().sum::<f64>() / n as f64;
    let interval = (n >= 2).then(|| {
        let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = t_975(n - 1) * (var / n as f64).sqrt();
        ((mean - half).exp(), (mean + half).exp())
    });
    Some(PairedRatio { n, ratio: mean.exp(), interval, outliers: outliers(&ratios) })
}

/// About how many rounds an interval of relative half-width `half` over `n` rounds would
/// need to narrow to `target` at the same spread between rounds (the spread estimated from
/// the interval: s = ln(1 + half)·√n / t(0.975, n−1); then n' = (1.96·s / ln(1 + target))²).
pub fn rounds_for(half: f64, n: usize, target: f64) -> usize {
    if n < 2 {
        return usize::MAX;
    }
    let s = (1.0 + half).ln() * (n as f64).sqrt() / t_975(n - 1);
    ((1.96 * s / (1.0 + target).ln()).powi(2).ceil() as usize).max(2)
}

/// How many of `values` lie below Q1 − 1.5·IQR or above Q3 + 1.5·IQR (quartiles by linear
/// interpolation between order statistics).
pub fn outliers(values: &[f64]) -> usize {
    if values.len() < 4 {
        return 0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let (q1, q3) = (quantile(&v, 0.25), quantile(&v, 0.75));
    let (low, high) = (q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1));
    v.iter().filter(|&&x| x < low || x > high).count()
}

/// The `p` quantile of sorted `v`, linear between order statistics.
fn quantile(v: &[f64], p: f64) -> f64 {
    let pos = p * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    match v.get(i + 1) {
        Some(next) => v[i] + frac * (next - v[i]),
        None => v[i],
    }
}

/// What an interval says about the numerator against the denominator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The interval excludes 1 on the worse side.
    Cost,
    /// The interval contains 1: no difference resolved.
    None,
    /// The interval excludes 1 on the better side.
    Gain,
}

impl Verdict {
    /// The verdict of an interval, for a figure where more is better (throughput) or not
    /// (latency).
    pub fn of(interval: (f64, f64), higher_is_better: bool) -> Verdict {
        let (low, high) = interval;
        let (worse, better) =
            if higher_is_better { (high < 1.0, low > 1.0) } else { (low > 1.0, high < 1.0) };
        match (worse, better) {
            (true, _) => Verdict::Cost,
            (_, true) => Verdict::Gain,
            _ => Verdict::None,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Verdict::Cost => "cost",
            Verdict::None => "none",
            Verdict::Gain => "gain",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99() {
        let s = summarize(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.p99), (3.0, 1.0, 5.0, 5.0));
        assert_eq!(summarize(&[1.0, 2.0, 3.0, 4.0]).unwrap().median, 2.5);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(summarize(&hundred).unwrap().p99, 99.0);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn t_quantiles_from_the_table() {
        assert_eq!(t_975(1), 12.706);
        assert_eq!(t_975(4), 2.776);
        assert_eq!(t_975(35), 2.042);
        assert_eq!(t_975(1000), 1.980);
        assert_eq!(t_975(usize::MAX), 1.960);
    }

    #[test]
    fn paired_ratio_interval_of_known_samples() {
        // Per-round ratios e^-0.1, e^0, e^0.1: mean of logs 0, s = 0.1, n = 3, t(0.975, 2) =
        // 4.303, half-width 4.303 · 0.1 / √3 = 0.248434: [0.78002, 1.28202].
        let den = [2.0, 3.0, 5.0];
        let num: Vec<f64> = den.iter().zip([-0.1f64, 0.0, 0.1]).map(|(d, l)| d * l.exp()).collect();
        let p = paired_ratio(&num, &den).unwrap();
        let (low, high) = p.interval.unwrap();
        assert_eq!(p.n, 3);
        assert!((p.ratio - 1.0).abs() < 1e-12);
        assert!((low - (-0.248434f64).exp()).abs() < 1e-5, "{low}");
        assert!((high - 0.248434f64.exp()).abs() < 1e-5, "{high}");
        assert!((low - 0.78002).abs() < 1e-5 && (high - 1.28202).abs() < 1e-5);
        // The inverse ratio has the inverted interval.
        let inv = paired_ratio(&den, &num).unwrap().interval.unwrap();
        assert!((inv.0 - 1.0 / high).abs() < 1e-12 && (inv.1 - 1.0 / low).abs() < 1e-12);
    }

    #[test]
    fn paired_ratio_edge_cases() {
        // Identical rounds: a zero-width interval at the ratio.
        let p = paired_ratio(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((p.ratio, p.interval), (2.0, Some((2.0, 2.0))));
        // One round: a ratio, no interval.
        let p = paired_ratio(&[3.0], &[2.0]).unwrap();
        assert_eq!((p.n, p.ratio, p.interval), (1, 1.5, None));
        // Rounds without a positive value on both sides are left out.
        assert_eq!(paired_ratio(&[1.0, 0.0, f64::NAN], &[1.0, 1.0, 1.0]).unwrap().n, 1);
        assert!(paired_ratio(&[], &[]).is_none());
    }

    #[test]
    fn outliers_beyond_one_and_a_half_iqr() {
        // Q1 = 1.0125, Q3 = 1.0375, IQR 0.025: fences 0.975 and 1.075.
        assert_eq!(outliers(&[1.01, 1.00, 1.50, 1.02, 1.03, 1.04]), 1);
        assert_eq!(outliers(&[0.90, 1.00, 1.01, 1.02, 1.03, 1.04]), 1);
        assert_eq!(outliers(&[1.00, 1.01, 1.02, 1.03, 1.04]), 0);
        // The count does not drop them from the ratio.
        let p = paired_ratio(&[1.0, 1.0, 1.0, 1.0, 2.0], &[1.0; 5]).unwrap();
        assert_eq!(p.outliers, 1);
        assert!(p.ratio > 1.0);
    }

    #[test]
    fn rounds_for_a_narrower_interval() {
        // ±2% over 100 rounds (t = 2.000, the table's row for 60): four times the rounds for ±1%,
        // times (1.96/2.00)²: 381.
        let n = rounds_for(0.02, 100, 0.01);
        assert!((379..=383).contains(&n), "{n}");
        assert_eq!(rounds_for(0.005, 20, 0.01), 5);
        assert_eq!(rounds_for(0.5, 1, 0.01), usize::MAX);
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of((0.97, 0.99), true), Verdict::Cost);
        assert_eq!(Verdict::of((0.97, 0.99), false), Verdict::Gain);
        assert_eq!(Verdict::of((1.01, 1.02), true), Verdict::Gain);
        assert_eq!(Verdict::of((1.01, 1.02), false), Verdict::Cost);
        assert_eq!(Verdict::of((0.99, 1.01), true), Verdict::None);
        assert_eq!(Verdict::of((0.99, 1.01), false).word(), "none");
    }
}
