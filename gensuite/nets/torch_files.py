"""Reads the tensors of a PyTorch file into numpy, without PyTorch and without running its pickles.

  arrays = read_torch_file('pt_inception-2015-12-05-6726825d.pth')   # {'Mixed_5b.branch1x1.conv.weight': ..., ...}

Understood formats, all as written by `torch.save` or `torch.jit.save`:
  zip archives    (torch >= 1.6): `<prefix>/data.pkl` plus one raw file per storage
                  under `<prefix>/data/`; TorchScript archives have the same layout,
                  their modules pickled as `__torch__.*` objects;
  legacy files    (torch < 1.6, or `_use_new_zipfile_serialization=False`): a magic
                  number, protocol and system-info pickles, the object pickle, the list
                  of storage keys, then each storage's bytes.

The object pickle is read by an unpickler that allows only the handful of globals
that describe tensors and containers; any other global (a code-execution vector in an
arbitrary pickle) is refused with a ConfigError. Module objects of a TorchScript file
are flattened into dotted names, as `state_dict()` would name their tensors.
"""
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from gensuite.errors import ConfigError

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'BFloat16Storage': 'bfloat16',
}


class _StorageType:
  def __init__(self, name: str):
    if name not in _STORAGE_DTYPES:
      raise ConfigError(f'unsupported tensor storage type torch.{name}; supported: '
                        f'{", ".join(sorted(_STORAGE_DTYPES))}')
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]


def _as_dtype(raw: bytes | memoryview, dtype, big_endian: bool = False) -> np.ndarray:
  if dtype == 'bfloat16':  # the upper half of a float32
    u16 = np.frombuffer(raw, np.dtype('>u2' if big_endian else '<u2'))
    return (u16.astype(np.uint32) << 16).view(np.float32)
  dt = np.dtype(dtype).newbyteorder('>' if big_endian else '<')
  return np.frombuffer(raw, dt).astype(np.dtype(dtype), copy=False)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
    raise ConfigError(f'malformed tensor in a PyTorch file: size {size}, stride {stride}, '
                      f'offset {offset}')
  if any(s == 0 for s in size):
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * st for n, st in zip(size, stride))
  if last >= storage.shape[0]:  # would read past the storage
    raise ConfigError(f'malformed tensor in a PyTorch file: it reaches element {last} of '
                      f'a storage of {storage.shape[0]}')
  if not size:
    return np.array(storage[offset])
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], size,
                                         tuple(s * item for s in stride))
  return np.array(view)  # own the memory: the storage may be a read-only buffer


def _rebuild_parameter(data, *unused):
  return data


def _rebuild_from_type(func, new_type, args, state):
  del new_type, state
  return func(*args)


class _TorchObject:
  """A pickled TorchScript module (or other scripted object): keeps only its state."""
  _torch_name = '?'

  def __setstate__(self, state):
    self.__dict__['_state'] = state


def _identity(x, *unused):
  return x


_REBUILD_TENSOR = (('torch._utils', '_rebuild_tensor_v2'), ('torch._utils', '_rebuild_tensor'))
_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type,
    ('torch.nn.parameter', 'Parameter'): None,
    ('torch', 'Tensor'): None,
    ('torch.jit._pickle', 'restore_type_tag'): _identity,
    ('torch.jit._pickle', 'build_intlist'): list,
    ('torch.jit._pickle', 'build_doublelist'): list,
    ('torch.jit._pickle', 'build_boollist'): list,
    ('torch.jit._pickle', 'build_tensorlist'): list,
}


class _NoGlobals(pickle.Unpickler):
  """For the legacy format's header and key-list pickles: plain values only."""

  def find_class(self, module, name):
    raise ConfigError(f'refusing to load {module}.{name} from a PyTorch file header')


class _Cell:
  """A legacy-format tensor, filled in once the storages (after the pickle) are read."""
  value = None


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, load_storage, path, rebuild_tensor=_rebuild_tensor):
    super().__init__(file, encoding='latin1')
    self._load_storage = load_storage
    self._path = path
    self._rebuild_tensor = rebuild_tensor

  def find_class(self, module, name):
    if module == 'torch' and name.endswith('Storage'):
      return _StorageType(name)
    if (module, name) in _REBUILD_TENSOR:
      return self._rebuild_tensor
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module.startswith('__torch__'):
      return type(name, (_TorchObject,), {'_torch_name': f'{module}.{name}'})
    raise ConfigError(f'{self._path}: refusing to load {module}.{name} from the pickle; '
                      f'only tensors, dicts and TorchScript modules are read')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise ConfigError(f'{self._path}: unknown persistent id {pid!r:.60}')
    return self._load_storage(pid)


def _storage_dtype(storage_type):
  if isinstance(storage_type, _StorageType):
    return storage_type.dtype
  raise ConfigError(f'unsupported storage type {storage_type!r}')


def _read_zip(path: str) -> object:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if not pkl:
      raise ConfigError(f'{path}: a zip file without data.pkl is not a PyTorch file')
    prefix = pkl[0][:-len('data.pkl')]
    big = False
    if prefix + 'byteorder' in names:
      big = zf.read(prefix + 'byteorder').strip() == b'big'
    cache = {}

    def load_storage(pid):
      _, storage_type, key, _, _ = pid[:5]
      if key not in cache:
        cache[key] = _as_dtype(zf.read(f'{prefix}data/{key}'), _storage_dtype(storage_type),
                               big)
      return cache[key]

    return _Unpickler(io.BytesIO(zf.read(pkl[0])), load_storage, path).load()


def _read_legacy(path: str) -> object:
  with open(path, 'rb') as f:
    data = f.read()
  buf = io.BytesIO(data)
  try:
    magic = _NoGlobals(buf).load()
  except ConfigError:
    raise
  except Exception:  # pylint: disable=broad-except
    magic = None
  if magic != _LEGACY_MAGIC:
    raise ConfigError(f'{path}: not a PyTorch file (neither a zip archive nor the legacy '
                      f'format); allowed weight files: .pth/.pt from torch.save or '
                      f'torch.jit.save, or .npz')
  # The protocol number and the system info hold only ints, bools and strings.
  _NoGlobals(buf).load()
  sys_info = _NoGlobals(buf).load()
  little = sys_info.get('little_endian', True) if isinstance(sys_info, dict) else True
  dtypes = {}  # storage key -> dtype

  def load_storage(pid):
    _, storage_type, key, _, _ = pid[:5]
    dtypes.setdefault(key, _storage_dtype(storage_type))
    view = pid[5] if len(pid) > 5 else None
    return (key, view)

  # Tensors are rebuilt after the storages are read, which follow the object pickle.
  deferred = []

  def rebuild(storage, offset, size, stride, *unused):
    cell = _Cell()
    deferred.append((cell, storage, offset, size, stride))
    return cell

  result = _Unpickler(buf, load_storage, path, rebuild).load()
  keys = _NoGlobals(buf).load()
  storages = {}
  pos = buf.tell()
  for key in keys:
    (count,) = struct.unpack('<q' if little else '>q', data[pos:pos + 8])
    pos += 8
    dtype = dtypes[key]
    itemsize = 2 if dtype == 'bfloat16' else np.dtype(dtype).itemsize
    storages[key] = _as_dtype(memoryview(data)[pos:pos + count * itemsize], dtype,
                              not little)
    pos += count * itemsize
  for cell, (key, view), offset, size, stride in deferred:
    storage = storages[key]
    if view is not None:  # (view key, offset, size) of a storage view
      storage = storage[view[1]:view[1] + view[2]]
    cell.value = _rebuild_tensor(storage, offset, size, stride)
  return _resolve(result)


def _resolve(obj):
  """Replaces the legacy reader's placeholder cells by their tensors."""
  if isinstance(obj, _Cell):
    return obj.value
  if isinstance(obj, dict):
    return type(obj)((k, _resolve(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v) for v in obj)
  if isinstance(obj, _TorchObject):
    obj.__dict__['_state'] = _resolve(obj.__dict__.get('_state'))
  return obj


def _flatten(obj, prefix: str, out: dict) -> None:
  if isinstance(obj, np.ndarray):
    out[prefix] = obj
  elif isinstance(obj, _TorchObject):
    _flatten(obj.__dict__.get('_state'), prefix, out)
  elif isinstance(obj, dict):
    for k, v in obj.items():
      if isinstance(k, str):
        _flatten(v, f'{prefix}.{k}' if prefix else k, out)


def read_torch_file(path: str) -> dict[str, np.ndarray]:
  """Every tensor in a torch.save / torch.jit.save file, by dotted name (module doc)."""
  if not os.path.isfile(path):
    raise ConfigError(f'weights file {path} does not exist')
  if zipfile.is_zipfile(path):
    obj = _read_zip(path)
  else:
    obj = _read_legacy(path)
  if isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
    obj = obj['state_dict']
  out: dict[str, np.ndarray] = {}
  _flatten(obj, '', out)
  if not out:
    raise ConfigError(f'{path}: no tensors found in this PyTorch file')
  return out
