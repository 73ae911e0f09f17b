/* Payload-log records in chunks, filled on the request's path (kiln_server.payload_log).

   Why C: at 100 % sampling every request pays for its record, and a one-row request costs the server ~60 us.
   In Python the record's path (a wrapper, the request id, a tuple queued, the writer's per-record work) cost
   ~5 us in the loaded server (perf: bytecode, allocation of what stays queued). Here the request's handler
   makes one call, and everything per record happens in it: sampling, the time, the latency, the id (the
   body's, else the x-request-id header or gRPC metadata, else none: the writer names it from the record's
   sequence number), and a copy of the record's values. Nothing of the request is kept, and no Python object
   is made.

   Rows, not columns, on the request's path: a record's values are appended to one row-major buffer (a row of
   a 30-feature model: inputs, label and probabilities side by side, ~140 bytes), so a request writes a few
   cache lines in one page. The writer thread turns a whole chunk into columns (Chunk.columns: blocks of rows,
   without the GIL).

   Layout: one part per array a record carries -- x (one n x width matrix, or a list of per-column vectors),
   the label, the probabilities when there are any. Kind 'f' | 'i' | 'u' | 'b' for numbers (width 1: a vector
   of n values; width k: an n x k C-contiguous matrix), 'O' for anything else (object arrays: categorical
   inputs, string labels), kept by reference. The first record sets the layout (the model's dtypes do not
   change); a record that does not fit it is not stored, and offer() says so (FIT), so the caller converts it
   or drops it. A record is stored whole or not at all.

   Memory is bounded: chunks of `chunk_rows` rows and `chunk_records` records are allocated up to `max_chunks`
   waiting (sealed or being filled); past that, or past `max_records` waiting records, a record is dropped and
   counted (`dropped`). An id is kept to ID_MAX bytes. Chunks the writer gives back are reused (at most `pool`
   kept), so steady logging touches warm memory and takes no page faults.

   Threads: REST's loop and gRPC's thread offer, the writer takes and recycles; the GIL serialises them. But a
   call that allocates a Python object may run the garbage collector, and with it Python code, and so let
   another thread in: offer() keeps its arrays and buffer views in its own frame, and store_room() looks again
   at the chunk being filled after allocating one. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAX_PARTS 100000
#define ID_MAX 256 /* bytes of UTF-8: ids are cut there, at a character's boundary */

typedef struct {
    char kind;  /* 'f' 'i' 'u' 'b' or 'O' */
    int matrix; /* an n x width array (x as one matrix, the probabilities); else a vector of n */
    int width;
    int itemsize;
    Py_ssize_t offset; /* of its values within a row (numbers) */
} Part;

/* A record's scalars, one struct per record. */
typedef struct {
    double time;    /* the wall clock when the record was offered (the answer was ready) */
    double seconds; /* the request's time in the server */
    int64_t seq;    /* the store's count of records, from 1: names a record that came without an id */
    int32_t nrows;
    uint8_t protocol; /* an index the caller defines */
    uint8_t has_id;
    uint8_t pad[2];
} Record;

enum { OFFER_DONE = 0, OFFER_FIT = 3 }; /* stored, dropped or not sampled | does not fit the layout */

/* -- Chunk -------------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t capacity;        /* rows */
    Py_ssize_t record_capacity; /* records */
    Py_ssize_t records;
    Py_ssize_t rows;
    Py_ssize_t row_bytes;
    Py_ssize_t id_used;   /* bytes of id_bytes in use */
    PyObject *scalars;    /* bytearray of Record[record_capacity] */
    PyObject *values;     /* bytearray of capacity rows of row_bytes: the numeric parts side by side */
    PyObject *id_offsets; /* bytearray of int32[record_capacity + 1]: Arrow's string offsets */
    PyObject *id_bytes;   /* bytearray: the ids' UTF-8, grown as needed */
    PyObject *objects;    /* tuple: per part, a list of its arrays ('O' parts) or None */
    Part *parts;          /* a copy of the store's layout */
    int nparts;
} Chunk;

static PyTypeObject ChunkType;

static void chunk_dealloc(Chunk *c) {
    Py_XDECREF(c->scalars);
    Py_XDECREF(c->values);
    Py_XDECREF(c->id_offsets);
    Py_XDECREF(c->id_bytes);
    Py_XDECREF(c->objects);
    PyMem_Free(c->parts);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static int unexported(PyObject *b) {
    return ((PyByteArrayObject *)b)->ob_exports == 0;
}

/* Rows r0..r1, columns j0..j1 of a part (offset, itemsize) into columns of `rows` values each, value by value. */
static void gather_values(char *out, const char *values, Py_ssize_t row_bytes, Py_ssize_t offset, int itemsize,
                          Py_ssize_t rows, Py_ssize_t r0, Py_ssize_t r1, int j0, int j1) {
    for (int j = j0; j < j1; j++) {
        char *dst = out + ((Py_ssize_t)j * rows + r0) * itemsize;
        const char *src = values + r0 * row_bytes + offset + (Py_ssize_t)j * itemsize;
        switch (itemsize) {
        case 8:
            for (Py_ssize_t r = r0; r < r1; r++, dst += 8, src += row_bytes)
                memcpy(dst, src, 8);
            break;
        case 4:
            for (Py_ssize_t r = r0; r < r1; r++, dst += 4, src += row_bytes)
                memcpy(dst, src, 4);
            break;
        default:
            for (Py_ssize_t r = r0; r < r1; r++, dst += itemsize, src += row_bytes)
                memcpy(dst, src, itemsize);
        }
    }
}

/* Rows r0..r1 of a part (offset, width, itemsize) into `width` columns of `rows` values each. With SSE2 (every
   x86-64), 4-byte values go as 4 x 4 tiles and 8-byte values as 2 x 2 tiles, transposed in registers: the
   writer's transposition of a 64-row, 30-feature request took 0.60 us value by value (a quarter of its
   encoding, by perf), 0.29 us in tiles. Moves and shuffles only: the bits are copied as they are (ints, NaNs). */
static void gather(char *out, const char *values, Py_ssize_t row_bytes, Py_ssize_t offset, int width, int itemsize,
                   Py_ssize_t rows, Py_ssize_t r0, Py_ssize_t r1) {
#if defined(__SSE2__)
    int tile = itemsize == 4 ? 4 : itemsize == 8 ? 2 : 0;
    if (tile && width >= tile && r1 - r0 >= tile) {
        Py_ssize_t rt = r0 + (r1 - r0) / tile * tile; /* rows in whole tiles */
        int jt = width / tile * tile;                 /* columns in whole tiles */
        for (Py_ssize_t r = r0; r < rt; r += tile) {
            const char *row = values + r * row_bytes + offset;
            if (tile == 4) {
                for (int j = 0; j < jt; j += 4) {
                    __m128 a = _mm_loadu_ps((const float *)(row + j * 4));
                    __m128 b = _mm_loadu_ps((const float *)(row + row_bytes + j * 4));
                    __m128 c = _mm_loadu_ps((const float *)(row + 2 * row_bytes + j * 4));
                    __m128 d = _mm_loadu_ps((const float *)(row + 3 * row_bytes + j * 4));
                    _MM_TRANSPOSE4_PS(a, b, c, d);
                    char *dst = out + ((Py_ssize_t)j * rows + r) * 4;
                    _mm_storeu_ps((float *)dst, a);
                    _mm_storeu_ps((float *)(dst + rows * 4), b);
                    _mm_storeu_ps((float *)(dst + 2 * rows * 4), c);
                    _mm_storeu_ps((float *)(dst + 3 * rows * 4), d);
                }
            } else {
                for (int j = 0; j < jt; j += 2) {
                    __m128d a = _mm_loadu_pd((const double *)(row + j * 8));
                    __m128d b = _mm_loadu_pd((const double *)(row + row_bytes + j * 8));
                    char *dst = out + ((Py_ssize_t)j * rows + r) * 8;
                    _mm_storeu_pd((double *)dst, _mm_unpacklo_pd(a, b));
                    _mm_storeu_pd((double *)(dst + rows * 8), _mm_unpackhi_pd(a, b));
                }
            }
        }
        gather_values(out, values, row_bytes, offset, itemsize, rows, r0, rt, jt, width); /* the columns left */
        gather_values(out, values, row_bytes, offset, itemsize, rows, rt, r1, 0, width);  /* the rows left */
        return;
    }
#endif
    gather_values(out, values, row_bytes, offset, itemsize, rows, r0, r1, 0, width);
}

/* columns([out]) -> tuple: per part, a bytearray of its values column by column (width columns of `rows`
   values: numpy's frombuffer(...)[:width * rows].reshape(width, rows)), or the list of its arrays ('O' parts).
   `out`, a list the caller keeps, holds a bytearray per part to write into (grown when too small, replaced when
   something still views it): the writer reuses them chunk after chunk, so their pages are not faulted in again
   for each chunk. */
static PyObject *chunk_columns(Chunk *c, PyObject *args) {
    PyObject *keep = NULL;
    if (!PyArg_ParseTuple(args, "|O!", &PyList_Type, &keep))
        return NULL;
    int nparts = c->nparts;
    if (keep != NULL && PyList_GET_SIZE(keep) < nparts) {
        while (PyList_GET_SIZE(keep) < nparts)
            if (PyList_Append(keep, Py_None) < 0)
                return NULL;
    }
    PyObject *out = PyTuple_New(nparts);
    if (out == NULL)
        return NULL;
    char **dst = PyMem_Calloc(nparts ? nparts : 1, sizeof(char *));
    if (dst == NULL) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    for (int p = 0; p < nparts; p++) {
        PyObject *o;
        if (c->parts[p].kind == 'O') {
            o = Py_NewRef(PyTuple_GET_ITEM(c->objects, p));
        } else {
            Py_ssize_t size = c->rows * c->parts[p].width * c->parts[p].itemsize;
            PyObject *kept = keep != NULL ? PyList_GET_ITEM(keep, p) : NULL;
            if (kept != NULL && PyByteArray_Check(kept) && unexported(kept) && PyByteArray_GET_SIZE(kept) >= size) {
                o = Py_NewRef(kept);
            } else {
                Py_ssize_t want = size > c->capacity * c->parts[p].width * c->parts[p].itemsize
                                      ? size : c->capacity * c->parts[p].width * c->parts[p].itemsize;
                o = PyByteArray_FromStringAndSize(NULL, keep != NULL ? want : size);
                if (o == NULL || (keep != NULL && PyList_SetItem(keep, p, Py_NewRef(o)) < 0)) {
                    Py_XDECREF(o);
                    PyMem_Free(dst);
                    Py_DECREF(out);
                    return NULL;
                }
            }
            dst[p] = PyByteArray_AS_STRING(o);
        }
        PyTuple_SET_ITEM(out, p, o);
    }
    const char *values = PyByteArray_AS_STRING(c->values);
    Py_ssize_t rows = c->rows, row_bytes = c->row_bytes;
    /* Blocks of rows that stay in the cache while every column takes its share. A chunk the writer holds is
       not written to (the store has sealed it), and the bytearrays are the writer's: no need of the GIL. */
    Py_ssize_t block = row_bytes > 0 ? 16384 / row_bytes + 1 : rows + 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r0 = 0; r0 < rows; r0 += block) {
        Py_ssize_t r1 = r0 + block < rows ? r0 + block : rows;
        for (int p = 0; p < nparts; p++)
            if (dst[p] != NULL)
                gather(dst[p], values, row_bytes, c->parts[p].offset, c->parts[p].width, c->parts[p].itemsize,
                       rows, r0, r1);
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(dst);
    return out;
}

static PyMemberDef chunk_members[] = {
    {"capacity", T_PYSSIZET, offsetof(Chunk, capacity), READONLY, "rows the chunk holds at most"},
    {"record_capacity", T_PYSSIZET, offsetof(Chunk, record_capacity), READONLY, "records it holds at most"},
    {"records", T_PYSSIZET, offsetof(Chunk, records), READONLY, "records stored"},
    {"rows", T_PYSSIZET, offsetof(Chunk, rows), READONLY, "rows stored"},
    {"scalars", T_OBJECT_EX, offsetof(Chunk, scalars), READONLY,
     "bytearray: per record float64 time, float64 seconds, int64 seq, int32 rows, uint8 protocol, uint8 has_id, "
     "2 bytes padding"},
    {"id_offsets", T_OBJECT_EX, offsetof(Chunk, id_offsets), READONLY, "bytearray: int32 offsets (records + 1)"},
    {"id_bytes", T_OBJECT_EX, offsetof(Chunk, id_bytes), READONLY, "bytearray: the ids' UTF-8 (a record without "
     "an id has none)"},
    {NULL}};

static PyMethodDef chunk_methods[] = {
    {"columns", (PyCFunction)chunk_columns, METH_VARARGS,
     "columns([out]) -> per part: a bytearray of width columns of `rows` values each, or the list of its arrays"},
    {NULL}};

static PyTypeObject ChunkType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kiln_server._payload_chunks.Chunk",
    .tp_basicsize = sizeof(Chunk),
    .tp_dealloc = (destructor)chunk_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Payload-log records (made by Store)",
    .tp_members = chunk_members,
    .tp_methods = chunk_methods,
};

static Chunk *chunk_new(const Part *parts, int nparts, Py_ssize_t row_bytes, Py_ssize_t capacity,
                        Py_ssize_t records) {
    Chunk *c = PyObject_New(Chunk, &ChunkType);
    if (c == NULL)
        return NULL;
    c->scalars = c->values = c->id_offsets = c->id_bytes = c->objects = NULL;
    c->capacity = capacity;
    c->record_capacity = records;
    c->records = c->rows = c->id_used = 0;
    c->row_bytes = row_bytes;
    c->nparts = nparts;
    c->parts = PyMem_Malloc(nparts * sizeof(Part));
    if (c->parts == NULL) {
        Py_DECREF(c);
        return (Chunk *)PyErr_NoMemory();
    }
    memcpy(c->parts, parts, nparts * sizeof(Part));
    c->scalars = PyByteArray_FromStringAndSize(NULL, records * (Py_ssize_t)sizeof(Record));
    c->values = PyByteArray_FromStringAndSize(NULL, capacity * row_bytes);
    c->id_offsets = PyByteArray_FromStringAndSize(NULL, (records + 1) * 4);
    c->id_bytes = PyByteArray_FromStringAndSize(NULL, records * 16);
    c->objects = PyTuple_New(nparts);
    if (!c->scalars || !c->values || !c->id_offsets || !c->id_bytes || !c->objects) {
        Py_DECREF(c);
        return NULL;
    }
    ((int32_t *)PyByteArray_AS_STRING(c->id_offsets))[0] = 0;
    for (int p = 0; p < nparts; p++) {
        PyObject *o = parts[p].kind == 'O' ? PyList_New(0) : Py_NewRef(Py_None);
        if (o == NULL) {
            Py_DECREF(c);
            return NULL;
        }
        PyTuple_SET_ITEM(c->objects, p, o);
    }
    return c;
}

/* A chunk can be refilled when nothing outside holds a view of its buffers. */
static int chunk_reusable(Chunk *c) {
    return unexported(c->scalars) && unexported(c->values) && unexported(c->id_offsets) && unexported(c->id_bytes);
}

static int chunk_clear(Chunk *c) {
    c->records = c->rows = c->id_used = 0;
    for (int p = 0; p < c->nparts; p++) {
        PyObject *o = PyTuple_GET_ITEM(c->objects, p);
        if (PyList_Check(o) && PyList_SetSlice(o, 0, PY_SSIZE_T_MAX, NULL) < 0)
            return -1;
    }
    return 0;
}

/* -- Store -------------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Part *parts; /* NULL until the first record sets the layout */
    int nparts;
    int x_parts; /* parts that hold x: 1 (a matrix) or one per column */
    Py_ssize_t row_bytes;
    Py_ssize_t chunk_rows;
    Py_ssize_t chunk_records;
    Py_ssize_t max_chunks;
    Py_ssize_t max_records;
    Py_ssize_t wake_records; /* the writer is woken once this many records wait */
    Py_ssize_t wake_rows;    /* ... or this many rows */
    Py_ssize_t pool_max;
    double sample_rate;
    uint64_t rng;
    PyObject *wake; /* callable, or None */
    int woken;      /* wake was called since the last take() */
    Py_ssize_t waiting_records;
    Py_ssize_t waiting_rows;
    Py_ssize_t waiting_chunks; /* regular-chunk equivalents held by sealed and current chunks */
    long long dropped;
    long long allocated; /* chunks made (not taken from the pool) */
    int64_t seq;
    Chunk *current;
    PyObject *sealed; /* list of Chunk */
    PyObject *pool;   /* list of Chunk, empty and reusable */
    int closed;
} Store;

static void store_dealloc(Store *s) {
    PyMem_Free(s->parts);
    Py_XDECREF(s->wake);
    Py_XDECREF(s->current);
    Py_XDECREF(s->sealed);
    Py_XDECREF(s->pool);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static int store_set_layout(Store *s, PyObject *spec, int x_parts);

static int store_init(Store *s, PyObject *args, PyObject *kw) {
    static char *names[] = {"chunk_rows", "chunk_records", "max_chunks", "max_records", "wake_records",
                            "wake_rows", "pool", "sample_rate", "wake", "seed", "parts", "x_parts", NULL};
    PyObject *wake = Py_None, *spec = Py_None;
    unsigned long long seed = 0x9E3779B97F4A7C15ULL;
    int x_parts = 1;
    s->pool_max = 4;
    s->sample_rate = 1.0;
    if (s->sealed != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Store is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nnnnnn|ndOKOi", names, &s->chunk_rows, &s->chunk_records,
                                     &s->max_chunks, &s->max_records, &s->wake_records, &s->wake_rows,
                                     &s->pool_max, &s->sample_rate, &wake, &seed, &spec, &x_parts))
        return -1;
    if (s->chunk_rows < 1 || s->chunk_records < 1 || s->max_chunks < 1 || s->max_records < 1 || s->pool_max < 0 ||
        s->chunk_records > INT32_MAX / ID_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "chunk_rows, chunk_records, max_chunks and max_records must be positive "
                                          "(chunk_records below 2**22)");
        return -1;
    }
    if (!(s->sample_rate >= 0.0 && s->sample_rate <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "sample_rate is between 0 and 1");
        return -1;
    }
    s->rng = seed ? seed : 1;
    s->wake = Py_NewRef(wake);
    s->sealed = PyList_New(0);
    s->pool = PyList_New(0);
    if (!s->sealed || !s->pool)
        return -1;
    if (spec != Py_None && store_set_layout(s, spec, x_parts) < 0)
        return -1;
    return 0;
}

/* The layout from a list of (kind, width, itemsize). */
static int store_set_layout(Store *s, PyObject *spec, int x_parts) {
    PyObject *seq = PySequence_Fast(spec, "parts must be a sequence of (kind, width, itemsize)");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > MAX_PARTS || x_parts < 1 || x_parts > n) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "a record has 1 to %d parts, x 1 to all of them, not %zd and %d", MAX_PARTS,
                     n, x_parts);
        return -1;
    }
    Part *parts = PyMem_Calloc(n, sizeof(Part));
    if (parts == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t row_bytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *kind;
        int width, itemsize, matrix = -1;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "sii|i;a part is (kind, width, itemsize[, matrix])",
                              &kind, &width, &itemsize, &matrix)) {
            PyMem_Free(parts);
            Py_DECREF(seq);
            return -1;
        }
        if (strlen(kind) != 1 || !strchr("fiubO", kind[0]) || width < 1 ||
            (kind[0] != 'O' && itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8) ||
            (kind[0] != 'O' && width > (1 << 20))) {
            PyMem_Free(parts);
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "part %zd: kind one of f i u b O, width 1 to 2**20, itemsize 1, 2, 4 or 8",
                         i);
            return -1;
        }
        parts[i] = (Part){kind[0], matrix < 0 ? width > 1 : matrix != 0, width, kind[0] == 'O' ? 0 : itemsize,
                          row_bytes};
        if (kind[0] != 'O')
            row_bytes += (Py_ssize_t)width * itemsize;
    }
    Py_DECREF(seq);
    if (row_bytes > 0 && s->chunk_rows > PY_SSIZE_T_MAX / 16 / row_bytes) {
        PyMem_Free(parts);
        PyErr_SetString(PyExc_ValueError, "chunk_rows x the row's size overflows");
        return -1;
    }
    if (s->parts != NULL) { /* another thread's first record set it meanwhile (see the top comment) */
        PyMem_Free(parts);
        return 0;
    }
    s->parts = parts;
    s->nparts = (int)n;
    s->x_parts = x_parts;
    s->row_bytes = row_bytes;
    return 0;
}

/* The kind numpy's buffer format stands for: 'f' float, 'i' signed, 'u' unsigned, 'b' bool, 0 otherwise. */
static char format_kind(const char *fmt) {
    if (fmt == NULL)
        return 'u'; /* "B" by default */
    while (*fmt == '<' || *fmt == '=' || *fmt == '@' || *fmt == '!' || *fmt == '>') {
        if (*fmt == '>' || *fmt == '!')
            return 0; /* not native order */
        fmt++;
    }
    if (fmt[0] == 0 || fmt[1] != 0)
        return 0;
    switch (fmt[0]) {
    case 'e': case 'f': case 'd': return 'f';
    case 'b': case 'h': case 'i': case 'l': case 'q': return 'i';
    case 'B': case 'H': case 'I': case 'L': case 'Q': return 'u';
    case '?': return 'b';
    default: return 0;
    }
}

/* The first record's arrays give the layout: numbers by value, anything else by reference. */
static int store_infer_layout(Store *s, PyObject **arrays, int count, int x_parts, int columns) {
    PyObject *spec = PyList_New(count);
    if (spec == NULL)
        return -1;
    for (int p = 0; p < count; p++) {
        /* x as one matrix, or the probabilities */
        int matrix = (p == 0 && !columns) || (p == count - 1 && count - x_parts == 2);
        char kind = 'O';
        int width = 1, itemsize = 0;
        Py_buffer v;
        if (PyObject_CheckBuffer(arrays[p]) &&
            PyObject_GetBuffer(arrays[p], &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) == 0) {
            char k = format_kind(v.format);
            if (k && (v.itemsize == 1 || v.itemsize == 2 || v.itemsize == 4 || v.itemsize == 8) &&
                v.ndim == (matrix ? 2 : 1) && (!matrix || (v.shape[1] >= 1 && v.shape[1] <= (1 << 20)))) {
                kind = k;
                width = matrix ? (int)v.shape[1] : 1;
                itemsize = (int)v.itemsize;
            }
            PyBuffer_Release(&v);
        } else {
            PyErr_Clear();
        }
        PyObject *t = Py_BuildValue("(Ciii)", kind, width, itemsize, matrix);
        if (t == NULL) {
            Py_DECREF(spec);
            return -1;
        }
        PyList_SET_ITEM(spec, p, t);
    }
    int r = store_set_layout(s, spec, x_parts);
    Py_DECREF(spec);
    return r;
}

static int store_seal(Store *s) {
    if (s->current == NULL)
        return 0;
    if (s->current->records > 0 && PyList_Append(s->sealed, (PyObject *)s->current) < 0)
        return -1;
    Py_CLEAR(s->current);
    return 0;
}

static Py_ssize_t chunks_for(Store *s, Py_ssize_t capacity) {
    return (capacity + s->chunk_rows - 1) / s->chunk_rows;
}

/* A chunk with room for a record of `rows` rows; NULL with no error set when the bound refuses one. */
static Chunk *store_room(Store *s, Py_ssize_t rows) {
again:;
    Chunk *c = s->current;
    if (c != NULL && c->records < c->record_capacity && c->rows + rows <= c->capacity)
        return c;
    Py_ssize_t capacity = rows > s->chunk_rows ? rows : s->chunk_rows;
    Py_ssize_t cost = chunks_for(s, capacity);
    /* the current chunk stays counted once sealed: a new one is refused if it would pass the bound */
    if (s->waiting_chunks + cost > s->max_chunks)
        return NULL;
    Py_ssize_t empty = c != NULL && c->records == 0 ? chunks_for(s, c->capacity) : 0;
    if (store_seal(s) < 0) /* an empty chunk is let go, no longer counted */
        return NULL;
    s->waiting_chunks -= empty;
    if (capacity == s->chunk_rows && PyList_GET_SIZE(s->pool) > 0) {
        Py_ssize_t last = PyList_GET_SIZE(s->pool) - 1;
        c = (Chunk *)Py_NewRef(PyList_GET_ITEM(s->pool, last));
        if (PyList_SetSlice(s->pool, last, last + 1, NULL) < 0) {
            Py_DECREF(c);
            return NULL;
        }
    } else {
        c = chunk_new(s->parts, s->nparts, s->row_bytes, capacity, s->chunk_records);
        if (c == NULL)
            return NULL;
        s->allocated++;
        if (s->current != NULL) { /* another offer made one while this one was allocated: use that */
            if (capacity == s->chunk_rows && PyList_GET_SIZE(s->pool) < s->pool_max &&
                PyList_Append(s->pool, (PyObject *)c) < 0) {
                Py_DECREF(c);
                return NULL;
            }
            Py_DECREF(c);
            goto again;
        }
    }
    s->current = c;
    s->waiting_chunks += cost;
    return c;
}

static double next_uniform(Store *s) { /* xorshift64*: sampling needs no more */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (double)((s->rng * 0x2545F4914F6CDD1DULL) >> 11) * (1.0 / 9007199254740992.0);
}

static double clock_s(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* UTF-8 of an id into out (ID_MAX bytes at most, cut at a character's boundary); -1 when it is not one. A str
   is taken as it is; bytes (HTTP header values) as Latin-1, as ASGI servers give them. */
static Py_ssize_t id_utf8(PyObject *o, char *out) {
    if (PyUnicode_Check(o)) {
        Py_ssize_t len;
        const char *u = PyUnicode_AsUTF8AndSize(o, &len);
        if (u == NULL) { /* lone surrogates: no UTF-8 */
            PyErr_Clear();
            return -1;
        }
        if (len > ID_MAX) {
            len = ID_MAX;
            while (len > 0 && ((unsigned char)u[len] & 0xC0) == 0x80)
                len--;
        }
        memcpy(out, u, len);
        return len;
    }
    if (PyBytes_Check(o)) {
        const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(o);
        Py_ssize_t n = PyBytes_GET_SIZE(o), len = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (b[i] < 0x80) {
                if (len + 1 > ID_MAX)
                    break;
                out[len++] = (char)b[i];
            } else {
                if (len + 2 > ID_MAX)
                    break;
                out[len++] = (char)(0xC0 | (b[i] >> 6));
                out[len++] = (char)(0x80 | (b[i] & 0x3F));
            }
        }
        return len;
    }
    return -1;
}

static int is_request_id_key(PyObject *k) {
    static const char name[] = "x-request-id";
    if (PyBytes_Check(k))
        return PyBytes_GET_SIZE(k) == 12 && memcmp(PyBytes_AS_STRING(k), name, 12) == 0;
    if (PyUnicode_Check(k))
        return PyUnicode_GET_LENGTH(k) == 12 && PyUnicode_CompareWithASCIIString(k, name) == 0;
    return 0;
}

/* The record's id: the body's (a non-empty str), else an x-request-id among `headers` (pairs of key and value),
   else none (-1). */
static Py_ssize_t record_id(PyObject *id, PyObject *headers, char *out) {
    if (id != Py_None && PyUnicode_Check(id) && PyUnicode_GET_LENGTH(id) > 0)
        return id_utf8(id, out);
    if (headers == Py_None || !(PyList_Check(headers) || PyTuple_Check(headers)))
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    PyObject **items = PySequence_Fast_ITEMS(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = items[i];
        if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 && is_request_id_key(PyTuple_GET_ITEM(pair, 0)))
            return id_utf8(PyTuple_GET_ITEM(pair, 1), out);
    }
    return -1;
}

/* n values of `size` bytes, one after another at src, into rows `stride` bytes apart at dst. A copy of a constant
   size is a move or two; memcpy of a size known only here is a call into libc per row (label and probabilities of
   a 64-row request: 128 calls). */
static void copy_rows(char *dst, Py_ssize_t stride, const char *src, Py_ssize_t size, Py_ssize_t n) {
#define COPY_ROWS(k)                                            \
    for (Py_ssize_t i = 0; i < n; i++, dst += stride, src += (k)) \
        memcpy(dst, src, (k));                                  \
    return;
    switch (size) {
    case 1: COPY_ROWS(1)
    case 2: COPY_ROWS(2)
    case 4: COPY_ROWS(4)
    case 8: COPY_ROWS(8)
    case 16: COPY_ROWS(16)
    default: COPY_ROWS(size)
    }
#undef COPY_ROWS
}

static int drop(Store *s) {
    s->dropped++;
    return OFFER_DONE;
}

static int store_offer_impl(Store *s, PyObject *const *args) {
    long proto = PyLong_AsLong(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[4]);
    double t0 = PyFloat_AsDouble(args[7]);
    if (PyErr_Occurred())
        return -1;
    if (proto < 0 || proto > 255 || n < 0 || n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "protocol is 0..255 and n is 0..2**31-1");
        return -1;
    }
    if (s->sample_rate < 1.0 && next_uniform(s) >= s->sample_rate)
        return OFFER_DONE;
    if (s->closed || s->waiting_records >= s->max_records)
        return drop(s);

    /* the record's arrays, in part order: x (a matrix, or its columns), label, probabilities */
    PyObject *x = args[3], *label = args[5], *probs = args[6];
    int columns = PyList_Check(x) || PyTuple_Check(x);
    Py_ssize_t nx = columns ? PySequence_Fast_GET_SIZE(x) : 1;
    int count = (int)nx + 1 + (probs != Py_None);
    if (s->parts == NULL) {
        if (nx < 1 || count > MAX_PARTS)
            return OFFER_FIT;
        PyObject **first = PyMem_Calloc(count, sizeof(PyObject *));
        if (first == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < nx; i++)
            first[i] = columns ? PySequence_Fast_ITEMS(x)[i] : x;
        first[nx] = label;
        if (probs != Py_None)
            first[nx + 1] = probs;
        int r = store_infer_layout(s, first, count, columns ? (int)nx : 1, columns);
        PyMem_Free(first);
        if (r < 0)
            return -1;
    }
    if (count != s->nparts || (columns ? (int)nx : 1) != s->x_parts)
        return OFFER_FIT;
    /* this call's own arrays and views (see the top comment): on the stack for a usual model, else allocated */
    PyObject *arrays_here[16];
    Py_buffer views_here[16];
    PyObject **arrays = arrays_here;
    Py_buffer *views = views_here;
    if (count > 16) {
        arrays = PyMem_Malloc(count * sizeof(PyObject *));
        views = PyMem_Malloc(count * sizeof(Py_buffer));
        if (arrays == NULL || views == NULL) {
            PyMem_Free(arrays);
            PyMem_Free(views);
            PyErr_NoMemory();
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < nx; i++)
        arrays[i] = columns ? PySequence_Fast_ITEMS(x)[i] : x;
    arrays[nx] = label;
    if (probs != Py_None)
        arrays[nx + 1] = probs;

    int viewed = 0, result = OFFER_FIT, wake = 0;
    for (int p = 0; p < s->nparts; p++) {
        const Part *part = &s->parts[p];
        viewed = p;
        if (part->kind == 'O')
            continue;
        Py_buffer *v = &views[p];
        if (PyObject_GetBuffer(arrays[p], v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            PyErr_Clear(); /* not an array of numbers, or not C-contiguous: the caller converts it */
            goto done;
        }
        viewed = p + 1;
        Py_ssize_t rows = v->ndim >= 1 ? v->shape[0] : -1;
        Py_ssize_t width = v->ndim == 2 ? v->shape[1] : (v->ndim == 1 ? 1 : -1);
        if (format_kind(v->format) != part->kind || v->itemsize != part->itemsize || rows != n ||
            width != part->width || v->ndim != (part->matrix ? 2 : 1))
            goto done;
    }
    viewed = s->nparts;

    char id[ID_MAX];
    Py_ssize_t id_len = record_id(args[1], args[2], id);
    Chunk *c = store_room(s, n);
    if (c == NULL) {
        result = PyErr_Occurred() ? -1 : drop(s);
        goto done;
    }
    Py_ssize_t need = c->id_used + (id_len > 0 ? id_len : 0);
    if (need > PyByteArray_GET_SIZE(c->id_bytes)) {
        Py_ssize_t grow = PyByteArray_GET_SIZE(c->id_bytes) * 2;
        if (PyByteArray_Resize(c->id_bytes, grow > need ? grow : need) < 0) {
            result = -1;
            goto done;
        }
    }
    for (int p = 0; p < s->nparts; p++) {
        if (s->parts[p].kind == 'O' && PyList_Append(PyTuple_GET_ITEM(c->objects, p), arrays[p]) < 0) {
            for (int q = 0; q < p; q++) /* undo what this record added, so the chunk stays whole */
                if (s->parts[q].kind == 'O') {
                    PyObject *l = PyTuple_GET_ITEM(c->objects, q);
                    PyList_SetSlice(l, PyList_GET_SIZE(l) - 1, PyList_GET_SIZE(l), NULL);
                }
            result = -1;
            goto done;
        }
    }
    char *row = PyByteArray_AS_STRING(c->values) + c->rows * s->row_bytes;
    for (int p = 0; p < s->nparts; p++) {
        const Part *part = &s->parts[p];
        if (part->kind == 'O')
            continue;
        Py_ssize_t size = (Py_ssize_t)part->width * part->itemsize;
        const char *src = views[p].buf;
        char *dst = row + part->offset;
        if (size == s->row_bytes)
            memcpy(dst, src, n * size);
        else
            copy_rows(dst, s->row_bytes, src, size, n);
    }
    if (id_len > 0)
        memcpy(PyByteArray_AS_STRING(c->id_bytes) + c->id_used, id, id_len);
    c->id_used += id_len > 0 ? id_len : 0;
    ((int32_t *)PyByteArray_AS_STRING(c->id_offsets))[c->records + 1] = (int32_t)c->id_used;
    Record *rec = (Record *)PyByteArray_AS_STRING(c->scalars) + c->records;
    rec->time = clock_s(CLOCK_REALTIME);
    rec->seconds = clock_s(CLOCK_MONOTONIC) - t0; /* time.perf_counter() is CLOCK_MONOTONIC on Linux */
    rec->seq = ++s->seq;
    rec->nrows = (int32_t)n;
    rec->protocol = (uint8_t)proto;
    rec->has_id = id_len >= 0;
    rec->pad[0] = rec->pad[1] = 0;
    c->records += 1;
    c->rows += n;
    s->waiting_records += 1;
    s->waiting_rows += n;
    result = OFFER_DONE;
    if (!s->woken && s->wake != Py_None &&
        (s->waiting_records >= s->wake_records || s->waiting_rows >= s->wake_rows)) {
        s->woken = 1;
        wake = 1;
    }
done:
    for (int p = 0; p < viewed; p++)
        if (s->parts[p].kind != 'O')
            PyBuffer_Release(&views[p]);
    if (arrays != arrays_here) {
        PyMem_Free(arrays);
        PyMem_Free(views);
    }
    if (wake) { /* Python code, last: the record is stored and nothing of this call is left in use */
        PyObject *r = PyObject_CallNoArgs(s->wake);
        if (r == NULL)
            result = -1;
        Py_XDECREF(r);
    }
    return result;
}

/* offer(protocol, id, headers, x, n, label, probs, t0) -> 0 (stored, dropped and counted, or not sampled) |
   3 (does not fit the layout: nothing stored). t0 is time.perf_counter() when the request began. */
static PyObject *store_offer(Store *s, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "offer(protocol, id, headers, x, n, label, probs, t0)");
        return NULL;
    }
    int r = store_offer_impl(s, args);
    if (r < 0)
        return NULL;
    return PyLong_FromLong(r);
}

/* take(records, rows[, seal]) -> [Chunk]: the oldest waiting chunks, the one being filled included unless seal is
   false, as many as keep within `records` records and `rows` rows (always one at least, when any waits). */
static PyObject *store_take(Store *s, PyObject *args) {
    Py_ssize_t max_records, max_rows;
    int seal = 1;
    if (!PyArg_ParseTuple(args, "nn|p", &max_records, &max_rows, &seal))
        return NULL;
    if (seal && s->current != NULL) {
        if (s->current->records == 0) { /* nothing in it: back to the pool */
            s->waiting_chunks -= chunks_for(s, s->current->capacity);
            if (s->current->capacity == s->chunk_rows && PyList_GET_SIZE(s->pool) < s->pool_max &&
                PyList_Append(s->pool, (PyObject *)s->current) < 0)
                return NULL;
            Py_CLEAR(s->current);
        } else if (store_seal(s) < 0) {
            return NULL;
        }
    }
    Py_ssize_t k = 0, records = 0, rows = 0, n = PyList_GET_SIZE(s->sealed);
    while (k < n) {
        Chunk *c = (Chunk *)PyList_GET_ITEM(s->sealed, k);
        if (k > 0 && (records + c->records > max_records || rows + c->rows > max_rows))
            break;
        records += c->records;
        rows += c->rows;
        s->waiting_chunks -= chunks_for(s, c->capacity);
        k++;
    }
    PyObject *out = PyList_GetSlice(s->sealed, 0, k);
    if (out == NULL || PyList_SetSlice(s->sealed, 0, k, NULL) < 0) {
        Py_XDECREF(out);
        return NULL;
    }
    s->waiting_records -= records;
    s->waiting_rows -= rows;
    s->woken = 0;
    return out;
}

/* recycle(chunk): the writer is done with it; kept for reuse when it is a regular chunk no view holds. */
static PyObject *store_recycle(Store *s, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &ChunkType)) {
        PyErr_SetString(PyExc_TypeError, "recycle() takes a Chunk");
        return NULL;
    }
    Chunk *c = (Chunk *)arg;
    if (!s->closed && c->capacity == s->chunk_rows && c->nparts == s->nparts && c->row_bytes == s->row_bytes &&
        PyList_GET_SIZE(s->pool) < s->pool_max && chunk_reusable(c)) {
        if (chunk_clear(c) < 0 || PyList_Append(s->pool, arg) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *store_close(Store *s, PyObject *unused) {
    s->closed = 1;
    if (PyList_SetSlice(s->pool, 0, PY_SSIZE_T_MAX, NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *store_waiting(Store *s, void *unused) {
    return Py_BuildValue("(nnn)", s->waiting_records, s->waiting_rows, s->waiting_chunks);
}

static PyObject *store_pooled(Store *s, void *unused) {
    return PyLong_FromSsize_t(PyList_GET_SIZE(s->pool));
}

static PyObject *store_dropped(Store *s, void *unused) {
    return PyLong_FromLongLong(s->dropped);
}

static PyObject *store_allocated(Store *s, void *unused) {
    return PyLong_FromLongLong(s->allocated);
}

static PyObject *store_layout(Store *s, void *unused) {
    if (s->parts == NULL)
        Py_RETURN_NONE;
    PyObject *out = PyList_New(s->nparts);
    for (int p = 0; out != NULL && p < s->nparts; p++) {
        PyObject *t = Py_BuildValue("(Ciii)", s->parts[p].kind, s->parts[p].width, s->parts[p].itemsize,
                                    s->parts[p].matrix);
        if (t == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, p, t);
    }
    return out;
}

static PyObject *store_sample_rate(Store *s, void *unused) {
    return PyFloat_FromDouble(s->sample_rate);
}

/* Set while serving (PayloadLog.sample_rate, from kiln_server.sample_rate_file): offer() reads it once per record,
   under the GIL. */
static int store_set_sample_rate(Store *s, PyObject *value, void *unused) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "sample_rate cannot be deleted");
        return -1;
    }
    double rate = PyFloat_AsDouble(value);
    if (rate == -1.0 && PyErr_Occurred())
        return -1;
    if (!(rate >= 0.0 && rate <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "sample_rate is between 0 and 1");
        return -1;
    }
    s->sample_rate = rate;
    return 0;
}

static PyObject *store_x_parts(Store *s, void *unused) {
    return PyLong_FromLong(s->x_parts);
}

static PyMethodDef store_methods[] = {
    {"offer", (PyCFunction)(void (*)(void))store_offer, METH_FASTCALL,
     "offer(protocol, id, headers, x, n, label, probs, t0) -> 0 done | 3 does not fit the layout"},
    {"take", (PyCFunction)store_take, METH_VARARGS, "take(records, rows[, seal]) -> [Chunk]"},
    {"recycle", (PyCFunction)store_recycle, METH_O, "recycle(chunk): give a written chunk back"},
    {"close", (PyCFunction)store_close, METH_NOARGS, "drop every record from now on"},
    {NULL}};

static PyGetSetDef store_getset[] = {
    {"waiting", (getter)store_waiting, NULL, "(records, rows, chunks) waiting for the writer", NULL},
    {"pooled", (getter)store_pooled, NULL, "empty chunks kept for reuse", NULL},
    {"dropped", (getter)store_dropped, NULL, "records dropped: the bound, or closed", NULL},
    {"allocated", (getter)store_allocated, NULL, "chunks made rather than taken from the pool", NULL},
    {"layout", (getter)store_layout, NULL, "[(kind, width, itemsize, matrix)] per part, None before the first record",
     NULL},
    {"x_parts", (getter)store_x_parts, NULL, "parts that hold x", NULL},
    {"sample_rate", (getter)store_sample_rate, (setter)store_set_sample_rate,
     "the share of offered records stored, 0..1 (the rest are not sampled: neither stored nor dropped)", NULL},
    {NULL}};

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kiln_server._payload_chunks.Store",
    .tp_basicsize = sizeof(Store),
    .tp_dealloc = (destructor)store_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Payload-log records in chunks, bounded (see the module's comment)",
    .tp_methods = store_methods,
    .tp_getset = store_getset,
    .tp_init = (initproc)store_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_payload_chunks",
                                    "Payload-log records in chunks (kiln_server.payload_log)", -1, NULL};

PyMODINIT_FUNC PyInit__payload_chunks(void) {
    if (PyType_Ready(&ChunkType) < 0 || PyType_Ready(&StoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Store", (PyObject *)&StoreType) < 0 ||
        PyModule_AddObjectRef(m, "Chunk", (PyObject *)&ChunkType) < 0 ||
        PyModule_AddIntConstant(m, "ID_MAX", ID_MAX) < 0 || PyModule_AddIntConstant(m, "FIT", OFFER_FIT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
