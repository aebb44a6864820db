//! A deliberately plain, obviously-correct scalar implementation of the
//! integer spec (see [`super`]), straight from the quantized row-major
//! layers, with every operation checked (it panics rather than wrap). Tests
//! and the benchmark compare the fast path with it.
#![allow(clippy::needless_range_loop)] // index loops on purpose: plain and obvious

use crate::model::{Activation, Model};

/// Score an encoded integer input (see the module docs of [`crate::infer`]).
pub fn score_int(model: &Model, x: &[i32]) -> i64 {
    let cur = outputs_int(model, x);
    if cur.len() == 2 {
        cur[1].checked_sub(cur[0]).expect("score overflows")
    } else {
        cur[0]
    }
}

/// The last layer's outputs for an encoded integer input (steps 1-4).
pub fn outputs_int(model: &Model, x: &[i32]) -> Vec<i64> {
    let mut cur: Vec<i64> = x[..model.feature_set().n_inputs()]
        .iter()
        .map(|&v| v as i64)
        .collect();
    for (k, l) in model.quantized_layers().iter().enumerate() {
        // Step 2b: a hidden layer after the first rescales its inputs
        // to 16 bits and scales its dot products back by 2^s.
        let mut scale: i64 = 1;
        if k > 0 && l.activation == Activation::Relu {
            let mut mx: i64 = 0;
            for i in 0..cur.len() {
                if cur[i] > mx {
                    mx = cur[i];
                }
            }
            let bits = 64 - mx.leading_zeros();
            let s = bits.saturating_sub(super::IN16_BITS);
            if s > 0 {
                for i in 0..cur.len() {
                    let mut u = (cur[i] + (1i64 << (s - 1))) >> s;
                    if u > super::IN16_MAX {
                        u = super::IN16_MAX;
                    }
                    cur[i] = u;
                }
            }
            scale = 1i64 << s;
        }
        let mut next = Vec::with_capacity(l.outputs);
        for o in 0..l.outputs {
            let mut dot: i64 = 0;
            for i in 0..l.inputs {
                let prod = (l.weights[o * l.inputs + i] as i64)
                    .checked_mul(cur[i])
                    .expect("product overflows i64");
                dot = dot.checked_add(prod).expect("sum overflows i64");
            }
            let acc = dot
                .checked_mul(scale)
                .and_then(|d| d.checked_add(l.bias[o]))
                .expect("sum overflows i64");
            if l.activation == Activation::Relu {
                let mut v = if acc > 0 { acc } else { 0 };
                if l.out_shift > 0 {
                    v = (v + (1i64 << (l.out_shift - 1))) >> l.out_shift;
                }
                if v > super::ACT_MAX {
                    v = super::ACT_MAX;
                }
                next.push(v);
            } else {
                next.push(acc);
            }
        }
        cur = next;
    }
    cur
}

/// f32 score computed in f64 with plain loops (for checking the f32 path).
pub fn score_f64(model: &Model, x: &[f32]) -> f64 {
    let mut cur: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for l in model.layers() {
        let mut next = Vec::with_capacity(l.outputs);
        for o in 0..l.outputs {
            let mut acc = l.bias[o] as f64;
            for i in 0..l.inputs {
                acc += l.weights[o * l.inputs + i] as f64 * cur[i];
            }
            next.push(if l.activation == Activation::Relu {
                acc.max(0.0)
            } else {
                acc
            });
        }
        cur = next;
    }
    if cur.len() == 2 {
        cur[1] - cur[0]
    } else {
        cur[0]
    }
}
