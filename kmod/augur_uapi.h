/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * The ioctls of /dev/augur (the model itself is loaded with one write() of
 * a model file). `augur kmod` is the userspace side.
 */
#ifndef AUGUR_UAPI_H
#define AUGUR_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* The active model (all zero when none is loaded). */
struct augur_ioc_info {
	__u32 crc;        /* model id: its file's CRC-32 */
	__u32 feature_set;
	__u32 n_inputs;
	__u32 n_layers;
	__u32 n_outputs;
	__u32 pad;
	__u64 swaps;      /* models published since the module loaded */
};

/*
 * Self-test: scores n encoded vectors (n * n_inputs s32 at inputs) with one
 * model held for the whole call, writing n * (n_outputs + 1) s64 to outputs
 * (each vector's outputs, then its score), and says which model it was and
 * how long the forward passes took.
 */
struct augur_ioc_predict {
	__u64 inputs;     /* user pointer to s32[n * n_inputs] */
	__u64 outputs;    /* user pointer to s64[n * (n_outputs + 1)] */
	__u32 n;          /* at most AUGUR_IOC_PREDICT_MAX */
	__u32 n_inputs;   /* must be the model's */
	__u32 crc;        /* out: the model used */
	__u32 n_outputs;  /* out */
	__u64 elapsed_ns; /* out: time in the forward passes */
};

#define AUGUR_IOC_PREDICT_MAX 1024 /* one RCU read section each: keep it short */

#define AUGUR_IOC_MAGIC 0xA6
#define AUGUR_IOC_INFO _IOR(AUGUR_IOC_MAGIC, 1, struct augur_ioc_info)
#define AUGUR_IOC_PREDICT _IOWR(AUGUR_IOC_MAGIC, 2, struct augur_ioc_predict)

#endif /* AUGUR_UAPI_H */
