/* Host noise by the Philox contract (ctrlgan/kernels/reference.py defines it):
 *
 *   z[b, j] = randn(seeds[b], j)   Philox-4x32-10 keyed by the 64-bit seed, counter j, then
 *                                  Box-Muller on the first two outputs (Triton's tl.randn)
 *
 * with optional truncation: values with |z| > tau are redrawn from counters j + r * Z,
 * r = 1 .. redraws - 1 (the first draw within tau wins), then clamped to [-tau, tau].
 *
 * The integer stage is bit-exact with the reference (and with Triton). The float stage follows
 * the reference's float32 operations; log and cos are evaluated in double and rounded, so a
 * value may differ from torch's float32 log/cos by an ulp (the contract allows 1e-6).
 *
 * Python: ctrlgan._philox.normal(seeds, z_dim, truncate, tau, redraws, out) with seeds a
 * contiguous uint64 buffer and out a writable float32 buffer of len(seeds) * z_dim values
 * (runtime/philox.py checks both): about a microsecond for a row of 64, against ~300 µs for
 * the ~250 small torch ops of the reference.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

/* values (rows x z_dim) from which a call releases the GIL: ~1 ms of work */
#define GIL_RELEASE_VALUES (1 << 16)

#define PHILOX_KEY_A 0x9E3779B9u
#define PHILOX_KEY_B 0xBB67AE85u
#define PHILOX_ROUND_A 0xD2511F53u
#define PHILOX_ROUND_B 0xCD9E8D57u
#define PHILOX_ROUNDS 10

static inline float uint_to_uniform(uint32_t x) {
    int64_t s = x >= 0x80000000u ? (int64_t)x - 0x100000000LL : (int64_t)x;
    if (s < 0) s = -s - 1;
    return (float)s * 4.6566127342e-10f;
}

static inline float randn(uint64_t seed, uint32_t counter) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    uint32_t c0 = counter, c1 = 0, c2 = 0, c3 = 0;
    for (int r = 0; r < PHILOX_ROUNDS; r++) {
        uint64_t pb = (uint64_t)PHILOX_ROUND_B * c2;
        uint64_t pa = (uint64_t)PHILOX_ROUND_A * c0;
        uint32_t n0 = (uint32_t)(pb >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(pa >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)pb;
        c3 = (uint32_t)pa;
        c0 = n0;
        c2 = n2;
        k0 += PHILOX_KEY_A;
        k1 += PHILOX_KEY_B;
    }
    float u1 = uint_to_uniform(c0);
    if (u1 < 1.0e-7f) u1 = 1.0e-7f;
    float theta = 6.283185307179586f * uint_to_uniform(c1);
    float radius = sqrtf(-2.0f * (float)log((double)u1));
    return radius * (float)cos((double)theta);
}

/* out[b * z_dim + j] for b < n, j < z_dim. truncate: 0 or 1; tau > 0 when truncating. */
void ctrlgan_philox_normal(const uint64_t *seeds, int64_t n, int64_t z_dim, int truncate,
                           double tau, int redraws, float *out) {
    float t = (float)tau;
    for (int64_t b = 0; b < n; b++) {
        for (int64_t j = 0; j < z_dim; j++) {
            float z = randn(seeds[b], (uint32_t)j);
            if (truncate) {
                for (int r = 1; r < redraws && fabsf(z) > t; r++)
                    z = randn(seeds[b], (uint32_t)(j + r * z_dim));
                z = z > t ? t : (z < -t ? -t : z);
            }
            out[b * z_dim + j] = z;
        }
    }
}

static PyObject *py_normal(PyObject *self, PyObject *args) {
    Py_buffer seeds, out;
    Py_ssize_t z_dim;
    int truncate, redraws;
    double tau;
    if (!PyArg_ParseTuple(args, "y*npdiw*", &seeds, &z_dim, &truncate, &tau, &redraws, &out))
        return NULL;
    Py_ssize_t n = seeds.len / (Py_ssize_t)sizeof(uint64_t);
    /* z_dim < 2^31 keeps the counters j + r * z_dim within the contract's 32-bit wrap; the
       division keeps n * z_dim * 4 from overflowing before the comparison */
    if (z_dim < 1 || z_dim >= ((Py_ssize_t)1 << 31) || seeds.len % (Py_ssize_t)sizeof(uint64_t) != 0 ||
        (n > 0 && z_dim > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(float) / n) ||
        out.len != n * z_dim * (Py_ssize_t)sizeof(float)) {
        PyBuffer_Release(&seeds);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "normal: buffer sizes do not match");
        return NULL;
    }
    /* The GIL is released only for large calls. A batch of a few hundred rows takes
       microseconds, and getting the GIL back can take a millisecond when other threads want
       it: measured under the micro-batcher with 32 client threads on 2 cores, its worker's
       noise call for a 16-row batch went from 11 us alone to ~1 ms, a third of the worker's
       time, while the clients it had just woken ran first (benchmarks/README.md). */
    if (n * z_dim < GIL_RELEASE_VALUES) {
        ctrlgan_philox_normal((const uint64_t *)seeds.buf, n, z_dim, truncate, tau, redraws,
                              (float *)out.buf);
    } else {
        Py_BEGIN_ALLOW_THREADS
        ctrlgan_philox_normal((const uint64_t *)seeds.buf, n, z_dim, truncate, tau, redraws,
                              (float *)out.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&seeds);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"normal", py_normal, METH_VARARGS, "Philox noise rows into a float32 buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_philox", NULL, -1, methods};

PyMODINIT_FUNC PyInit__philox(void) { return PyModule_Create(&module); }
