/* Durable-log bodies straight to InfluxDB line protocol: the InfluxDB sink's hot path.
 *
 * The log keeps each record as the compact JSON object fieldhub/core/body.py writes (orjson):
 *   {"k":kind,"d":device,"t":ns,"f":{fields},"g":{tags},"s":source,"i":id}
 * body.py owns those keys; the BODY_KEY_* macros below are this file's copy of them, and
 * tests/test_body.py checks them (and the module's BODY_KEYS) against body.C_KEYS.
 * Decoding that into Python objects and formatting it again cost the sink ~8 us per point;
 * this walks the JSON bytes once and writes the line directly, producing exactly the bytes
 * fieldhub.lineproto.Encoder.line writes for the decoded record (tests/test_influx_fast.py
 * checks that on generated records).
 *
 * What it does not handle it hands back: a record whose body is not of that shape, that has
 * a field value that is an object or array, no writable field, an id that is not hex, or an
 * id in `skip` is returned by index, and the Python encoder deals with it (quarantine
 * included). The series part (measurement and tags) comes from a Python callback, cached in
 * a dict keyed by the raw kind/device/tags text, so tag rules live in one place.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The body keys this encoder reads (the source key is skipped): mirror fieldhub/core/body.py. */
#define BODY_KEY_KIND 'k'
#define BODY_KEY_DEVICE 'd'
#define BODY_KEY_TS 't'
#define BODY_KEY_FIELDS 'f'
#define BODY_KEY_TAGS 'g'
#define BODY_KEY_ID 'i'

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = PyMem_RawRealloc(b->p, cap);  /* used without the GIL */
    if (p == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(buf_t *b, const char *s, size_t n) {
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static int buf_putc(buf_t *b, char c) {
    if (b->len == b->cap && buf_reserve(b, 1) < 0)
        return -1;
    b->p[b->len++] = c;
    return 0;
}

/* Results of the per-record walk. FALLBACK: hand the record to Python. NOMEM: raise. */
enum { OK = 0, FALLBACK = 1, NOMEM = 2 };

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Skips a JSON string starting at the opening quote; returns the position after the
 * closing quote, or NULL. *escaped tells whether it held any backslash escape. */
static const char *skip_string(const char *p, const char *end, int *escaped) {
    *escaped = 0;
    for (p++; p < end; p++) {
        if (*p == '"')
            return p + 1;
        if (*p == '\\') {
            *escaped = 1;
            p++;
        } else if ((unsigned char)*p < 0x20) {
            return NULL;
        }
    }
    return NULL;
}

/* Skips any JSON value (objects and arrays to a bounded depth). */
static const char *skip_value(const char *p, const char *end, int depth) {
    int esc;
    if (p >= end || depth > 32)
        return NULL;
    if (*p == '"')
        return skip_string(p, end, &esc);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p++;
        if (p < end && *p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                if (p >= end || *p != '"')
                    return NULL;
                p = skip_string(p, end, &esc);
                if (p == NULL || p >= end || *p != ':')
                    return NULL;
                p++;
            }
            p = skip_value(p, end, depth + 1);
            if (p == NULL || p >= end)
                return NULL;
            if (*p == ',') {
                p++;
                continue;
            }
            return *p == close ? p + 1 : NULL;
        }
    }
    while (p < end && *p != ',' && *p != '}' && *p != ']')
        p++;
    return p;
}

/* Decodes the JSON string at p (opening quote) into out, escaping for line protocol:
 * mode 's' (string field value: " and \ escaped), mode 'k' (tag/field key: , = space and
 * \n \r \t escaped). Returns the position after the closing quote, or NULL (FALLBACK). */
static const char *put_string(buf_t *out, const char *p, const char *end, char mode, int *err) {
    *err = FALLBACK;
    for (p++; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        uint32_t cp;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL;
        if (c != '\\') {
            const char *run = p;  /* copy a run of plain bytes at once */
            while (p + 1 < end && p[1] != '"' && p[1] != '\\' && (unsigned char)p[1] >= 0x20 &&
                   (mode == 's' || (p[1] != ',' && p[1] != '=' && p[1] != ' ')))
                p++;
            if (mode == 'k' && (c == ',' || c == '=' || c == ' ')) {
                if (buf_putc(out, '\\') < 0) goto nomem;
            }
            if (buf_put(out, run, (size_t)(p - run + 1)) < 0) goto nomem;
            continue;
        }
        if (++p >= end)
            return NULL;
        switch (*p) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u': {
            int h0, h1, h2, h3;
            if (end - p < 5)
                return NULL;
            h0 = hexval(p[1]); h1 = hexval(p[2]); h2 = hexval(p[3]); h3 = hexval(p[4]);
            if ((h0 | h1 | h2 | h3) < 0)
                return NULL;
            cp = (uint32_t)((h0 << 12) | (h1 << 8) | (h2 << 4) | h3);
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {  /* a surrogate pair, or give up */
                int l0, l1, l2, l3;
                uint32_t lo;
                if (end - p < 7 || p[1] != '\\' || p[2] != 'u')
                    return NULL;
                l0 = hexval(p[3]); l1 = hexval(p[4]); l2 = hexval(p[5]); l3 = hexval(p[6]);
                if ((l0 | l1 | l2 | l3) < 0)
                    return NULL;
                lo = (uint32_t)((l0 << 12) | (l1 << 8) | (l2 << 4) | l3);
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return NULL;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return NULL;
            }
            break;
        }
        default:
            return NULL;
        }
        if (mode == 's') {
            if (cp == '"' || cp == '\\') {
                if (buf_putc(out, '\\') < 0) goto nomem;
            }
        } else {
            const char *rep = NULL;
            switch (cp) {
            case ',': rep = "\\,"; break;
            case '=': rep = "\\="; break;
            case ' ': rep = "\\ "; break;
            case '\n': rep = "\\n"; break;
            case '\r': rep = "\\r"; break;
            case '\t': rep = "\\t"; break;
            }
            if (rep != NULL) {
                if (buf_put(out, rep, 2) < 0) goto nomem;
                continue;
            }
        }
        {
            char u[4];
            size_t n;
            if (cp < 0x80) { u[0] = (char)cp; n = 1; }
            else if (cp < 0x800) { u[0] = (char)(0xC0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
            else if (cp < 0x10000) {
                u[0] = (char)(0xE0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
            } else {
                u[0] = (char)(0xF0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
            }
            if (buf_put(out, u, n) < 0) goto nomem;
        }
    }
    return NULL;
nomem:
    *err = NOMEM;
    return NULL;
}

/* A JSON number at p: writes it as Python writes the value (repr for a float, "<int>i" for
 * an int) and returns the position after it, or NULL. */
static const char *put_number(buf_t *out, const char *p, const char *end, int *err) {
    const char *s = p;
    char digits[800];
    int nd = 0, decpt = 0, seen_point = 0, neg = 0, is_float = 0;
    long exp10 = 0;
    *err = FALLBACK;
    if (p < end && *p == '-') { neg = 1; p++; }
    if (p >= end || *p < '0' || *p > '9')
        return NULL;
    for (; p < end; p++) {
        char c = *p;
        if (c >= '0' && c <= '9') {
            if (nd == 0 && c == '0') {        /* leading zeros carry no digit */
                if (seen_point) decpt--;
                continue;
            }
            if (nd >= (int)sizeof(digits))
                return NULL;
            digits[nd++] = c;
            if (!seen_point) decpt++;
        } else if (c == '.' && !seen_point) {
            seen_point = is_float = 1;
        } else {
            break;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        int eneg = 0;
        is_float = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-')) { eneg = *p == '-'; p++; }
        if (p >= end || *p < '0' || *p > '9')
            return NULL;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (exp10 > 100000)
                return NULL;
            exp10 = exp10 * 10 + (*p - '0');
        }
        if (eneg) exp10 = -exp10;
    }
    if (!is_float) {
        if (nd == 0 && neg)  /* "-0": Python writes 0i */
            return NULL;
        if (buf_put(out, s, (size_t)(p - s)) < 0 || buf_putc(out, 'i') < 0) goto nomem;
        return p;
    }
    while (nd > 0 && digits[nd - 1] == '0')
        nd--;
    if (buf_reserve(out, (size_t)nd + 32) < 0) goto nomem;
    if (neg && buf_putc(out, '-') < 0) goto nomem;
    if (nd == 0) {
        if (buf_put(out, "0.0", 3) < 0) goto nomem;
        return p;
    }
    decpt += (int)exp10;
    /* Python's repr: scientific when decpt <= -4 or decpt > 16 */
    if (decpt <= -4 || decpt > 16) {
        char e[16];
        int x = decpt - 1;
        if (buf_putc(out, digits[0]) < 0) goto nomem;
        if (nd > 1 && (buf_putc(out, '.') < 0 || buf_put(out, digits + 1, (size_t)nd - 1) < 0)) goto nomem;
        snprintf(e, sizeof(e), "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
        if (buf_put(out, e, strlen(e)) < 0) goto nomem;
    } else if (decpt <= 0) {
        if (buf_put(out, "0.", 2) < 0) goto nomem;
        for (int i = 0; i < -decpt; i++)
            if (buf_putc(out, '0') < 0) goto nomem;
        if (buf_put(out, digits, (size_t)nd) < 0) goto nomem;
    } else if (decpt < nd) {
        if (buf_put(out, digits, (size_t)decpt) < 0 || buf_putc(out, '.') < 0 ||
            buf_put(out, digits + decpt, (size_t)(nd - decpt)) < 0) goto nomem;
    } else {
        if (buf_put(out, digits, (size_t)nd) < 0) goto nomem;
        for (int i = nd; i < decpt; i++)
            if (buf_putc(out, '0') < 0) goto nomem;
        if (buf_put(out, ".0", 2) < 0) goto nomem;
    }
    return p;
nomem:
    *err = NOMEM;
    return NULL;
}

/* The fields object at p ('{') as line-protocol fields into out; *count = fields written. */
static const char *put_fields(buf_t *out, const char *p, const char *end, int *count, int *err) {
    *count = 0;
    *err = FALLBACK;
    if (p >= end || *p != '{')
        return NULL;
    p++;
    if (p < end && *p == '}')
        return p + 1;
    for (;;) {
        size_t mark = out->len, key_start;
        if (p >= end || *p != '"')
            return NULL;
        if (*count && buf_putc(out, ',') < 0) goto nomem;
        key_start = out->len;
        p = put_string(out, p, end, 'k', err);
        if (p == NULL)
            return NULL;
        if (out->len > key_start && out->p[out->len - 1] == '\\' && buf_putc(out, ' ') < 0) goto nomem;
        if (p >= end || *p != ':')
            return NULL;
        p++;
        if (p >= end)
            return NULL;
        if (buf_putc(out, '=') < 0) goto nomem;
        if (*p == '"') {
            if (buf_putc(out, '"') < 0) goto nomem;
            p = put_string(out, p, end, 's', err);
            if (p == NULL)
                return NULL;
            if (buf_putc(out, '"') < 0) goto nomem;
            (*count)++;
        } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
            p = put_number(out, p, end, err);
            if (p == NULL)
                return NULL;
            (*count)++;
        } else if (end - p >= 4 && memcmp(p, "true", 4) == 0) {
            if (buf_put(out, "true", 4) < 0) goto nomem;
            p += 4;
            (*count)++;
        } else if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
            if (buf_put(out, "false", 5) < 0) goto nomem;
            p += 5;
            (*count)++;
        } else if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
            out->len = mark;  /* nan/inf were stored as null: nothing to write */
            p += 4;
        } else {
            return NULL;      /* an object or array: the Python encoder's business */
        }
        if (p >= end)
            return NULL;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p != '}')
            return NULL;
        return p + 1;
    }
nomem:
    *err = NOMEM;
    return NULL;
}

typedef struct {
    const char *k, *d, *g, *id;
    Py_ssize_t kn, dn, gn, idn;
    int64_t ts;
} head_t;

static int parse_int64(const char *p, const char *end, const char **after, int64_t *v) {
    int neg = 0;
    uint64_t acc = 0;
    const char *s;
    if (p < end && *p == '-') { neg = 1; p++; }
    s = p;
    for (; p < end && *p >= '0' && *p <= '9'; p++) {
        if (acc > (UINT64_MAX - 9) / 10)
            return -1;
        acc = acc * 10 + (uint64_t)(*p - '0');
    }
    if (p == s || (p < end && (*p == '.' || *p == 'e' || *p == 'E')))
        return -1;
    if (acc > (uint64_t)INT64_MAX + (uint64_t)neg)
        return -1;
    *v = neg ? (int64_t)(0 - acc) : (int64_t)acc;
    *after = p;
    return 0;
}

/* One body: fields into fbuf, the rest into h. */
static int walk(const char *p, const char *end, buf_t *fbuf, head_t *h, int *nfields) {
    int seen = 0, err, esc;
    if (p >= end || *p != '{')
        return FALLBACK;
    p++;
    while (p < end && *p == '"') {
        const char *key = p + 1, *v;
        int klen;
        p = skip_string(p, end, &esc);
        if (p == NULL || esc || p >= end || *p != ':')
            return FALLBACK;
        klen = (int)(p - key - 1);
        v = ++p;
        if (klen == 1) {  /* each of kind, device, id, ts, fields, tags once */
            static const char names[6] = {BODY_KEY_KIND, BODY_KEY_DEVICE, BODY_KEY_ID, BODY_KEY_TS,
                                          BODY_KEY_FIELDS, BODY_KEY_TAGS};  /* bit order of `seen` */
            const char *at = memchr(names, *key, 6);
            if (at != NULL) {
                int bit = 1 << (at - names);
                if (seen & bit)
                    return FALLBACK;
            }
        }
        if (klen == 1 && (*key == BODY_KEY_KIND || *key == BODY_KEY_DEVICE || *key == BODY_KEY_ID)) {
            if (v >= end || *v != '"')
                return FALLBACK;
            p = skip_string(v, end, &esc);
            if (p == NULL)
                return FALLBACK;
            if (*key == BODY_KEY_KIND) { h->k = v; h->kn = p - v; seen |= 1; }
            else if (*key == BODY_KEY_DEVICE) { h->d = v; h->dn = p - v; seen |= 2; }
            else {
                if (esc)
                    return FALLBACK;
                h->id = v + 1; h->idn = p - v - 2; seen |= 4;
            }
        } else if (klen == 1 && *key == BODY_KEY_TS) {
            if (parse_int64(v, end, &p, &h->ts) < 0)
                return FALLBACK;
            seen |= 8;
        } else if (klen == 1 && *key == BODY_KEY_FIELDS) {
            p = put_fields(fbuf, v, end, nfields, &err);
            if (p == NULL)
                return err;
            seen |= 16;
        } else if (klen == 1 && *key == BODY_KEY_TAGS) {
            if (v >= end || *v != '{')
                return FALLBACK;
            p = skip_value(v, end, 0);
            if (p == NULL)
                return FALLBACK;
            h->g = v; h->gn = p - v; seen |= 32;
        } else {
            p = skip_value(v, end, 0);
            if (p == NULL)
                return FALLBACK;
        }
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        break;
    }
    if (p >= end || *p != '}' || p + 1 != end || seen != 63)
        return FALLBACK;
    return OK;
}

/* fieldhub.lineproto.nudge for a hex id: 0 when ts is not a whole microsecond, else an
 * offset below ts's own precision taken from the id's first 12 hex digits. */
static int nudge(const head_t *h, int64_t *add) {
    uint64_t v = 0;
    Py_ssize_t n = h->idn < 12 ? h->idn : 12;
    *add = 0;
    if (h->ts % 1000)
        return 0;
    if (n == 0)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        int x = hexval(h->id[i]);
        if (x < 0)
            return -1;
        v = v * 16 + (uint64_t)x;
    }
    *add = (int64_t)(h->ts % 1000000 == 0 ? v % 1000000 : v % 1000);
    return 0;
}

/* " <ts>" into s, NUL-terminated (snprintf was a tenth of the encoder's time). */
static void put_ts(char *s, int64_t v) {
    char tmp[24];
    int n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    *s++ = ' ';
    if (v < 0)
        *s++ = '-';
    while (n)
        *s++ = tmp[--n];
    *s = '\0';
}

static PyObject *series_of(const head_t *h, PyObject *cache, PyObject *series_fn) {
    size_t n = (size_t)(h->kn + h->dn + h->gn + 2);
    PyObject *key = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n), *val;
    char *s;
    if (key == NULL)
        return NULL;
    s = PyBytes_AS_STRING(key);
    memcpy(s, h->k, (size_t)h->kn); s += h->kn; *s++ = '\0';
    memcpy(s, h->d, (size_t)h->dn); s += h->dn; *s++ = '\0';
    memcpy(s, h->g, (size_t)h->gn);
    val = PyDict_GetItemWithError(cache, key);
    if (val != NULL) {
        Py_DECREF(key);
        Py_INCREF(val);
        return val;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    val = PyObject_CallFunction(series_fn, "y#y#y#", h->k, h->kn, h->d, h->dn, h->g, h->gn);
    if (val != NULL && val != Py_None && !PyBytes_Check(val)) {
        PyErr_SetString(PyExc_TypeError, "series callback must return bytes or None");
        Py_CLEAR(val);
    }
    if (val != NULL && val != Py_None && PyDict_SetItem(cache, key, val) < 0)
        Py_CLEAR(val);
    Py_DECREF(key);
    return val;
}

PyDoc_STRVAR(encode_doc,
"encode(bodies, cache, series, nudge, skip) -> (body, lines, handed_back)\n\n"
"bodies: log bodies joined by newlines (bytes). cache: a dict the series keys are kept in.\n"
"series(kind_json, device_json, tags_json) -> bytes: the escaped 'measurement,tags' part,\n"
"or None to hand the record back.\n"
"nudge: apply fieldhub.lineproto.nudge. skip: None or a container of ids (str) to hand\n"
"back instead of encoding.\n"
"Returns the lines joined by newlines, how many there are, and the indexes of the bodies\n"
"the caller must encode itself.");

/* One row between the passes of encode(). */
typedef struct {
    const char *b;       /* its body, inside the caller's bytes */
    Py_ssize_t n;
    head_t h;
    size_t foff, flen;   /* its fields text in the shared fields buffer */
    int64_t ts;          /* nudged */
    int rc;
    PyObject *series;    /* new reference */
} row_t;

static PyObject *encode(PyObject *self, PyObject *args) {
    PyObject *bodies, *cache, *series_fn, *skip, *handed = NULL, *result = NULL;
    int do_nudge, nomem = 0;
    buf_t out = {0}, fbuf = {0};
    Py_ssize_t nrows = 0, lines = 0, i;
    size_t guess;
    row_t *rs = NULL;
    const char *p, *end;
    if (!PyArg_ParseTuple(args, "SO!OpO:encode", &bodies, &PyDict_Type, &cache,
                          &series_fn, &do_nudge, &skip))
        return NULL;
    if (skip != Py_None) {
        Py_ssize_t n = PyObject_Length(skip);
        if (n < 0)
            return NULL;
        if (n == 0)
            skip = Py_None;
    }
    p = PyBytes_AS_STRING(bodies);
    end = p + PyBytes_GET_SIZE(bodies);
    guess = (size_t)(end - p);  /* a line is about as long as its body */
    handed = PyList_New(0);
    if (handed == NULL)
        return NULL;
    if (end > p) {  /* 1: where each body is (JSON bodies hold no raw newline) */
        Py_ssize_t cap = 1;
        for (const char *q = p; (q = memchr(q, '\n', (size_t)(end - q))) != NULL; q++)
            cap++;
        rs = PyMem_RawCalloc((size_t)cap, sizeof(row_t));
        if (rs == NULL)
            goto nomem;
        while (nrows < cap) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            rs[nrows].b = p;
            rs[nrows].n = (nl ? nl : end) - p;
            nrows++;
            p = nl ? nl + 1 : end;
        }
    }
    /* 2: parse and write the fields without the GIL: the hub's other threads (MQTT ingest,
     * the sink's own posts) run meanwhile */
    Py_BEGIN_ALLOW_THREADS
    if (buf_reserve(&fbuf, guess) < 0 || buf_reserve(&out, guess + guess / 4 + 256) < 0)
        nomem = 1;
    for (i = 0; i < nrows && !nomem; i++) {
        row_t *r = &rs[i];
        int nfields = 0;
        int64_t add = 0;
        r->foff = fbuf.len;
        r->rc = walk(r->b, r->b + r->n, &fbuf, &r->h, &nfields);
        if (r->rc == OK && nfields == 0)
            r->rc = FALLBACK;
        if (r->rc == OK && do_nudge && (nudge(&r->h, &add) < 0 || r->h.ts > INT64_MAX - add))
            r->rc = FALLBACK;
        if (r->rc == NOMEM)
            nomem = 1;
        if (r->rc != OK)
            fbuf.len = r->foff;
        r->flen = fbuf.len - r->foff;
        r->ts = r->h.ts + add;
    }
    Py_END_ALLOW_THREADS
    if (nomem)
        goto nomem;
    for (i = 0; i < nrows; i++) {  /* 3: skip list and series keys (Python objects) */
        row_t *r = &rs[i];
        if (r->rc == OK && skip != Py_None) {
            PyObject *id = PyUnicode_DecodeUTF8(r->h.id, r->h.idn, NULL);
            int hit;
            if (id == NULL)
                goto error;
            hit = PySequence_Contains(skip, id);
            Py_DECREF(id);
            if (hit < 0)
                goto error;
            if (hit)
                r->rc = FALLBACK;
        }
        if (r->rc == OK) {
            r->series = series_of(&r->h, cache, series_fn);
            if (r->series == NULL)
                goto error;
            if (r->series == Py_None) {  /* the callback could not read it: the caller's */
                Py_CLEAR(r->series);
                r->rc = FALLBACK;
            }
        }
        if (r->rc != OK) {
            PyObject *n = PyLong_FromSsize_t(i);
            if (n == NULL || PyList_Append(handed, n) < 0) {
                Py_XDECREF(n);
                goto error;
            }
            Py_DECREF(n);
        }
    }
    Py_BEGIN_ALLOW_THREADS  /* 4: the lines */
    for (i = 0; i < nrows && !nomem; i++) {
        row_t *r = &rs[i];
        char ts[32];
        if (r->series == NULL)
            continue;
        put_ts(ts, r->ts);
        if ((lines && buf_putc(&out, '\n') < 0) ||
            buf_put(&out, PyBytes_AS_STRING(r->series), (size_t)PyBytes_GET_SIZE(r->series)) < 0 ||
            buf_putc(&out, ' ') < 0 || buf_put(&out, fbuf.p + r->foff, r->flen) < 0 ||
            buf_put(&out, ts, strlen(ts)) < 0)
            nomem = 1;
        lines++;
    }
    Py_END_ALLOW_THREADS
    if (nomem)
        goto nomem;
    result = Py_BuildValue("(y#nO)", out.p ? out.p : "", (Py_ssize_t)out.len, lines, handed);
    goto done;
nomem:
    PyErr_NoMemory();
error:
done:
    if (rs != NULL) {
        for (i = 0; i < nrows; i++)
            Py_XDECREF(rs[i].series);
        PyMem_RawFree(rs);
    }
    Py_XDECREF(handed);
    PyMem_RawFree(out.p);
    PyMem_RawFree(fbuf.p);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS, encode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fieldhub.sinks.influx._lpenc",
    "Durable-log bodies to InfluxDB line protocol (the InfluxDB sink's hot path).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__lpenc(void) {
    /* the keys as built, in the order of body.C_KEYS: kind, device, ts, fields, tags, id */
    static const char keys[7] = {BODY_KEY_KIND, BODY_KEY_DEVICE, BODY_KEY_TS, BODY_KEY_FIELDS,
                                 BODY_KEY_TAGS, BODY_KEY_ID, 0};
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "BODY_KEYS", keys) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
