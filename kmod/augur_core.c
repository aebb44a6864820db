// SPDX-License-Identifier: GPL-2.0
/* The predictor core, the model file parser and the feature encoders, shared with userspace: the
 * files themselves, not copies. */
#include "../predictor/c/augur_predict.c"
#include "../predictor/c/augur_model.c"
#include "../predictor/c/augur_features.c"
