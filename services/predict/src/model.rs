//! The delay model: a class-balanced logistic regression on the 10 features the challenge settled
//! on (one-hot OPERA, TIPOVUELO and MES, reduced to ten columns). Training, evaluation and the
//! versioned JSON artifact. Pure: no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "flightline-delay-model/v1";

/// The feature columns, in order: `(column, value)` one-hot indicators.
pub const FEATURES: [(&str, &str); 10] = [
    ("OPERA", "Latin American Wings"),
    ("MES", "7"),
    ("MES", "10"),
    ("OPERA", "Grupo LATAM"),
    ("MES", "12"),
    ("TIPOVUELO", "I"),
    ("MES", "4"),
    ("MES", "11"),
    ("OPERA", "Sky Airline"),
    ("OPERA", "Copa Air"),
];

/// The inputs of one prediction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    pub airline: String,
    pub flight_type: String,
    pub month: u8,
}

impl Features {
    pub fn vector(&self) -> [f64; 10] {
        let month = self.month.to_string();
        FEATURES.map(|(column, value)| {
            let actual = match column {
                "OPERA" => self.airline.as_str(),
                "TIPOVUELO" => self.flight_type.as_str(),
                _ => month.as_str(),
            };
            if actual == value { 1.0 } else { 0.0 }
        })
    }
}

/// The artifact the service loads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub format: String,
    /// Changes whenever the weights do.
    pub version: String,
    pub features: Vec<String>,
    pub intercept: f64,
    pub coefficients: Vec<f64>,
    pub threshold: f64,
    /// Every OPERA value seen in training; others are rejected as unknown.
    pub airlines: Vec<String>,
    /// Per-class precision, recall and F1 on the held-out split.
    pub evaluation: Evaluation,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub train_rows: usize,
    pub test_rows: usize,
    pub split_seed: u64,
    pub class_weight_delayed: f64,
    pub class_0: ClassScores,
    pub class_1: ClassScores,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

impl Model {
    pub fn probability(&self, features: &Features) -> f64 {
        let z = self.intercept + features.vector().iter().zip(&self.coefficients).map(|(x, w)| x * w).sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }

    pub fn label(&self, probability: f64) -> u8 {
        u8::from(probability >= self.threshold)
    }

    pub fn knows_airline(&self, airline: &str) -> bool {
        self.airlines.binary_search_by(|a| a.as_str().cmp(airline)).is_ok()
    }

    /// Checks an artifact before it replaces the one in use.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT:?}", self.format));
        }
        let names: Vec<String> = FEATURES.iter().map(|(c, v)| format!("{c}_{v}")).collect();
        if self.features != names || self.coefficients.len() != FEATURES.len() {
            return Err("features do not match this service's".into());
        }
        if !self.intercept.is_finite() || self.coefficients.iter().any(|w| !w.is_finite()) {
            return Err("weights are not finite".into());
        }
        if self.airlines.windows(2).any(|w| w[0] >= w[1]) {
            return Err("airlines must be sorted and unique".into());
        }
        Ok(())
    }
}

/// One labelled example.
#[derive(Clone, Debug)]
pub struct Example {
    pub features: Features,
    pub delayed: bool,
}

/// Splits 67/33 after a seeded shuffle, trains, evaluates on the held-out third.
pub fn train(examples: &[Example], seed: u64) -> Model {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    shuffle(&mut order, seed);
    let test_len = (examples.len() as f64 * 0.33).round() as usize;
    let (test_idx, train_idx) = order.split_at(test_len);
    let pick = |idx: &[usize]| idx.iter().map(|&i| examples[i].clone()).collect::<Vec<_>>();
    let (train_set, test_set) = (pick(train_idx), pick(test_idx));

    let delayed = train_set.iter().filter(|e| e.delayed).count();
    let weight_delayed = (train_set.len() - delayed) as f64 / delayed.max(1) as f64;
    let (intercept, coefficients) = fit(&train_set, weight_delayed);

    let mut airlines: Vec<String> = examples.iter().map(|e| e.features.airline.clone()).collect();
    airlines.sort();
    airlines.dedup();
    let mut model = Model {
        format: FORMAT.into(),
        version: String::new(),
        features: FEATURES.iter().map(|(c, v)| format!("{c}_{v}")).collect(),
        intercept,
        coefficients: coefficients.to_vec(),
        threshold: 0.5,
        airlines,
        evaluation: Evaluation {
            train_rows: train_set.len(),
            test_rows: test_set.len(),
            split_seed: seed,
            class_weight_delayed: weight_delayed,
            class_0: ClassScores { precision: 0.0, recall: 0.0, f1: 0.0, support: 0 },
            class_1: ClassScores { precision: 0.0, recall: 0.0, f1: 0.0, support: 0 },
        },
    };
    let (class_0, class_1) = evaluate(&model, &test_set);
    model.evaluation.class_0 = class_0;
    model.evaluation.class_1 = class_1;
    model.version = version_of(&model);
    model
}

/// Weighted logistic regression by Newton's method (IRLS) with a tiny L2 term for stability.
#[allow(clippy::needless_range_loop)] // index loops read like the matrix algebra they implement
fn fit(examples: &[Example], weight_delayed: f64) -> (f64, [f64; 10]) {
    const N: usize = 11; // intercept + 10 features
    const L2: f64 = 1e-6;
    let rows: Vec<([f64; N], f64, f64)> = examples
        .iter()
        .map(|e| {
            let mut x = [1.0; N];
            x[1..].copy_from_slice(&e.features.vector());
            let (y, weight) = if e.delayed { (1.0, weight_delayed) } else { (0.0, 1.0) };
            (x, y, weight)
        })
        .collect();
    let mut beta = [0.0; N];
    for _ in 0..50 {
        let mut gradient = [0.0; N];
        let mut hessian = [[0.0; N]; N];
        for (x, y, weight) in &rows {
            let z: f64 = x.iter().zip(&beta).map(|(a, b)| a * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            for i in 0..N {
                gradient[i] += weight * (p - y) * x[i];
                for j in 0..N {
                    hessian[i][j] += weight * p * (1.0 - p) * x[i] * x[j];
                }
            }
        }
        for i in 1..N {
            gradient[i] += L2 * beta[i];
            hessian[i][i] += L2;
        }
        let step = solve(hessian, gradient);
        let mut largest: f64 = 0.0;
        for i in 0..N {
            beta[i] -= step[i];
            largest = largest.max(step[i].abs());
        }
        if largest < 1e-10 {
            break;
        }
    }
    let mut coefficients = [0.0; 10];
    coefficients.copy_from_slice(&beta[1..]);
    (beta[0], coefficients)
}

/// Gaussian elimination with partial pivoting on a small dense system.
#[allow(clippy::needless_range_loop)] // index loops read like the matrix algebra they implement
fn solve<const N: usize>(mut a: [[f64; N]; N], mut b: [f64; N]) -> [f64; N] {
    for col in 0..N {
        let pivot = (col..N).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let d = a[col][col];
        if d.abs() < 1e-300 {
            continue;
        }
        for row in col + 1..N {
            let f = a[row][col] / d;
            for k in col..N {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; N];
    for row in (0..N).rev() {
        let s: f64 = (row + 1..N).map(|k| a[row][k] * x[k]).sum();
        x[row] = if a[row][row].abs() < 1e-300 { 0.0 } else { (b[row] - s) / a[row][row] };
    }
    x
}

/// Per-class precision, recall and F1 of a model on examples.
pub fn evaluate(model: &Model, examples: &[Example]) -> (ClassScores, ClassScores) {
    let mut confusion = BTreeMap::<(bool, bool), usize>::new();
    for e in examples {
        let predicted = model.label(model.probability(&e.features)) == 1;
        *confusion.entry((e.delayed, predicted)).or_default() += 1;
    }
    let count = |truth, predicted| *confusion.get(&(truth, predicted)).unwrap_or(&0) as f64;
    let scores = |class: bool| {
        let tp = count(class, class);
        let fp = count(!class, class);
        let fneg = count(class, !class);
        let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
        let recall = if tp + fneg > 0.0 { tp / (tp + fneg) } else { 0.0 };
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        ClassScores { precision, recall, f1, support: (tp + fneg) as usize }
    };
    (scores(false), scores(true))
}

/// Fisher–Yates with SplitMix64: the same seed gives the same split on every machine.
fn shuffle(items: &mut [usize], seed: u64) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// `v1-` and 12 hex digits of an FNV-1a hash of the weights, threshold and airline list.
fn version_of(model: &Model) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&model.intercept.to_le_bytes());
    model.coefficients.iter().for_each(|w| eat(&w.to_le_bytes()));
    eat(&model.threshold.to_le_bytes());
    model.airlines.iter().for_each(|a| eat(a.as_bytes()));
    format!("v1-{:012x}", hash >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(airline: &str, flight_type: &str, month: u8) -> Features {
        Features { airline: airline.into(), flight_type: flight_type.into(), month }
    }

    #[test]
    fn one_hot_vector_follows_the_feature_order() {
        assert_eq!(features("Aerolineas Argentinas", "N", 3).vector(), [0.0; 10]);
        let v = features("Copa Air", "I", 7).vector();
        assert_eq!(v, [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn solver_solves() {
        let x = solve([[2.0, 1.0], [1.0, 3.0]], [3.0, 5.0]);
        assert!((x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12, "{x:?}");
    }

    #[test]
    fn training_recovers_a_planted_signal_and_is_deterministic() {
        // Copa Air flights are delayed, others are not.
        let examples: Vec<Example> = (0..400)
            .map(|i| {
                let airline = if i % 4 == 0 { "Copa Air" } else { "Sky Airline" };
                Example {
                    features: features(airline, "N", 1 + (i % 12) as u8),
                    delayed: airline == "Copa Air" && i % 8 != 4,
                }
            })
            .collect();
        let a = train(&examples, 7);
        let b = train(&examples, 7);
        assert_eq!(a, b);
        assert!(a.probability(&features("Copa Air", "N", 1)) > 0.5);
        assert!(a.probability(&features("Sky Airline", "N", 1)) < 0.5);
        assert_eq!(a.airlines, vec!["Copa Air", "Sky Airline"]);
        a.validate().unwrap();
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut items: Vec<usize> = (0..1000).collect();
        shuffle(&mut items, 42);
        assert_ne!(items, (0..1000).collect::<Vec<_>>());
        items.sort();
        assert_eq!(items, (0..1000).collect::<Vec<_>>());
    }
}
