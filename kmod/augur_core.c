// SPDX-License-Identifier: GPL-2.0
/* The predictor core and the model file parser, shared with userspace: the
 * files themselves, not copies. */
#include "../predictor/c/augur_predict.c"
#include "../predictor/c/augur_model.c"
