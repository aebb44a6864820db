// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * Fuzz target for the model file parser (augur_model.c, the kernel
 * module's): any bytes either are refused, or parse into a model whose
 * forward pass runs, on the zero vector and on the all-maximum one, within
 * the memory the parser asked for. Built two ways (predictor/c/fuzz/run):
 * with clang's libFuzzer and ASan/UBSan for fuzzing, and with any C
 * compiler plus replay.c to run a corpus once (the CI test).
 */
#include <stdlib.h>
#include <string.h>

#include "../augur_model.h"

static struct augur_scratch scratch;

int LLVMFuzzerTestOneInput(const u8 *data, size_t size);

int LLVMFuzzerTestOneInput(const u8 *data, size_t size)
{
	const char *why;
	size_t need;
	struct augur_model *m;
	s32 x[AUGUR_MAX_INPUTS];
	s64 out[AUGUR_MAX_OUTPUTS];
	void *mem;
	u32 i;
	int err;

	err = augur_model_check(data, size, &need, &why);
	if (err) {
		if (err >= 0 || !why || !*why)
			abort(); /* a refusal always says why, with an errno */
		return 0;
	}
	/* Exactly the bytes asked for, so ASan sees any write past them. */
	mem = malloc(need);
	if (!mem)
		return 0;
	m = augur_model_build(data, size, mem);
	for (i = 0; i < m->n_inputs; i++)
		x[i] = 0;
	augur_forward(m, x, out, &scratch);
	for (i = 0; i < m->n_inputs; i++)
		x[i] = m->feature_set == AUGUR_FS_HEIMDALL ? 1024 : 9;
	augur_forward(m, x, out, &scratch);
	free(mem);
	return 0;
}
