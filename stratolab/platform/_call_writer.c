/* The call journal's per-call write in one C call (stratolab.platform.metering.CallJournal).

A Writer stores one call record (call_records.CALL: tag, ok, key id, end µs, duration µs; 24 bytes)
into the journal's shared mapping, the tag last, and advances the write position: all of it while
holding the GIL, so no other Python thread sees a half-done write or the same position twice, with
no lock of its own. It only takes the common case; for anything else it answers False and writes
nothing, and the journal's Python path (under its lock) does the work:
  - the key (user, function, version, memory GB) has no id in this file yet (its key record first);
  - the record does not fit in the mapping (room is reserved, or the file rotates);
  - the journal is busy (its Python path is between two steps of a write, a rotation or a close);
  - no mapping is attached, or a time is not a finite number.
The conversions are the Python path's, bit for bit: end = int(ended_at * 1e6) and duration =
int(duration_s * 1e6 + 0.5) when duration_s > 0, else 0 (IEEE doubles truncated toward zero).
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define SLOT 24
#define CALL_TAG 1

typedef struct {
    PyObject_HEAD
    Py_buffer view;      /* the mapping, while attached */
    int attached;
    Py_ssize_t size;     /* where the next record goes (bytes from the start of the file) */
    PyObject *keys;      /* dict: (user, function, version, memory GB) -> key id in this file */
    int busy;            /* set by the Python path while it writes, rotates or closes */
} Writer;

static void store_le(unsigned char *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

static PyObject *Writer_record(Writer *self, PyObject *const *args, Py_ssize_t nargs) {
    /* record(user, function, version, memory_gb, duration_s, ok, ended_at) -> bool */
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "record takes 7 arguments");
        return NULL;
    }
    if (!self->attached || self->busy || self->keys == NULL) {
        Py_RETURN_FALSE;
    }
    /* The conversions and the key lookup first: for arguments of other types they may run Python code
       (__float__, __bool__, __hash__, __eq__), during which another thread may write, rotate or detach.
       The writer's state is read only after them, in the step that writes, where no Python code runs. */
    double duration_s = PyFloat_AsDouble(args[4]);
    if (duration_s == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    double ended_at = PyFloat_AsDouble(args[6]);
    if (ended_at == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    if (!isfinite(duration_s) || !isfinite(ended_at)) {
        Py_RETURN_FALSE;
    }
    double end_scaled = ended_at * 1000000.0;
    double dur_scaled = duration_s > 0 ? duration_s * 1000000.0 + 0.5 : 0.0;
    if (fabs(end_scaled) >= 9.2e18 || dur_scaled >= 9.2e18) {
        Py_RETURN_FALSE;
    }
    int ok = PyObject_IsTrue(args[5]);
    if (ok < 0) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    PyObject *keys = self->keys; /* held: a rotation may replace it meanwhile */
    if (keys == NULL) {
        Py_RETURN_FALSE;
    }
    Py_INCREF(keys);
    PyObject *key = PyTuple_Pack(4, args[0], args[1], args[2], args[3]);
    if (key == NULL) {
        Py_DECREF(keys);
        return NULL;
    }
    PyObject *id = PyDict_GetItemWithError(keys, key); /* borrowed */
    Py_XINCREF(id);
    Py_DECREF(key);
    if (id == NULL) {
        PyErr_Clear();
        Py_DECREF(keys);
        Py_RETURN_FALSE;
    }
    unsigned long long key_id = PyLong_AsUnsignedLongLong(id);
    Py_DECREF(id);
    if (key_id == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        key_id = 0x100000000ull; /* refused below */
    }
    /* One step from here to the end: no Python code runs, so no other thread can interleave. */
    Py_ssize_t pos = self->size;
    int fits = self->attached && !self->busy && self->keys == keys && key_id <= 0xFFFFFFFFull && pos >= 0
               && pos + SLOT <= self->view.len;
    if (fits) {
        unsigned char *p = (unsigned char *)self->view.buf + pos;
        /* "<BBxxIqq": tag, ok, 2 pad bytes, key id, end, duration; everything but the tag first */
        p[1] = (unsigned char)(ok ? 1 : 0);
        p[2] = 0;
        p[3] = 0;
        store_le(p + 4, (uint64_t)key_id, 4);
        store_le(p + 8, (uint64_t)(int64_t)end_scaled, 8);
        store_le(p + 16, (uint64_t)(int64_t)dur_scaled, 8);
        __atomic_store_n(p, (unsigned char)CALL_TAG, __ATOMIC_RELEASE); /* a reader sees all of it or none */
        self->size = pos + SLOT;
    }
    Py_DECREF(keys); /* last: freeing a replaced dict must not run before the write */
    return PyBool_FromLong(fits);
}

static PyObject *Writer_attach(Writer *self, PyObject *mapping) {
    if (self->attached) {
        PyBuffer_Release(&self->view);
        self->attached = 0;
    }
    if (PyObject_GetBuffer(mapping, &self->view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    self->attached = 1;
    Py_RETURN_NONE;
}

static PyObject *Writer_detach(Writer *self, PyObject *Py_UNUSED(ignored)) {
    if (self->attached) {
        PyBuffer_Release(&self->view);
        self->attached = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *Writer_get_size(Writer *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->size);
}

static int Writer_set_size(Writer *self, PyObject *value, void *Py_UNUSED(closure)) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "size cannot be deleted");
        return -1;
    }
    Py_ssize_t size = PyLong_AsSsize_t(value);
    if (size == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must not be negative");
        return -1;
    }
    self->size = size;
    return 0;
}

static PyObject *Writer_get_keys(Writer *self, void *Py_UNUSED(closure)) {
    if (self->keys == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(self->keys);
    return self->keys;
}

static int Writer_set_keys(Writer *self, PyObject *value, void *Py_UNUSED(closure)) {
    if (value == NULL || !PyDict_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "keys must be a dict");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->keys, value);
    return 0;
}

static PyObject *Writer_get_busy(Writer *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->busy);
}

static int Writer_set_busy(Writer *self, PyObject *value, void *Py_UNUSED(closure)) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "busy cannot be deleted");
        return -1;
    }
    int busy = PyObject_IsTrue(value);
    if (busy < 0) {
        return -1;
    }
    self->busy = busy;
    return 0;
}

static PyObject *Writer_get_attached(Writer *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->attached);
}

static int Writer_traverse(Writer *self, visitproc visit, void *arg) {
    Py_VISIT(self->keys);
    return 0;
}

static int Writer_clear(Writer *self) {
    Py_CLEAR(self->keys);
    return 0;
}

static void Writer_dealloc(Writer *self) {
    PyObject_GC_UnTrack(self);
    if (self->attached) {
        PyBuffer_Release(&self->view);
        self->attached = 0;
    }
    Writer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Writer() takes no arguments");
        return NULL;
    }
    Writer *self = (Writer *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->keys = PyDict_New();
    if (self->keys == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyMethodDef Writer_methods[] = {
    {"record", (PyCFunction)(void (*)(void))Writer_record, METH_FASTCALL,
     "record(user, function, version, memory_gb, duration_s, ok, ended_at) -> bool: the call stored, or "
     "False (nothing written) where the journal's Python path must store it"},
    {"attach", (PyCFunction)Writer_attach, METH_O, "attach(mapping): write into this writable buffer"},
    {"detach", (PyCFunction)Writer_detach, METH_NOARGS, "let go of the mapping (before it is closed)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Writer_getset[] = {
    {"size", (getter)Writer_get_size, (setter)Writer_set_size, "where the next record goes", NULL},
    {"keys", (getter)Writer_get_keys, (setter)Writer_set_keys, "key -> key id in the active file", NULL},
    {"busy", (getter)Writer_get_busy, (setter)Writer_set_busy, "the Python path is writing", NULL},
    {"attached", (getter)Writer_get_attached, NULL, "a mapping is attached", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratolab.platform._call_writer.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The call journal's per-call write (see the module's source)",
    .tp_new = Writer_new,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_traverse = (traverseproc)Writer_traverse,
    .tp_clear = (inquiry)Writer_clear,
    .tp_methods = Writer_methods,
    .tp_getset = Writer_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "stratolab.platform._call_writer",
    .m_doc = "The call journal's per-call write in one C call.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__call_writer(void) {
    if (PyType_Ready(&WriterType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
