//! Feature encodings, model file, CPU inference (f32 and integer), training,
//! quantization, evaluation and C code generation for the slow-I/O predictor.
//!
//! Being built: the predictor arrives in its own issue.
