"""Loading the tutorial's pickles without running anything they contain.

Unpickling can call any importable function (``os.system`` included), so ``load_plain_pickle``
1. scans the opcodes first and refuses those that can reach an object without ``find_class``
   (copyreg extension codes, served from a process-wide cache) and persistent ids;
2. unpickles with ``find_class`` refusing every global, so no class or function is ever looked up,
   hence nothing is constructed or called;
3. checks that what came out is only dict, list, tuple, str, int, float, bool and None (sets and
   bytes are built by opcodes alone, so they are refused here).
"""
from __future__ import annotations

import copyreg
import io
import pickle
import pickletools
from pathlib import Path
from typing import Any

from core.errors import DatasetError, UnsafePickleError

ALLOWED_TYPES = (dict, list, tuple, str, int, float, bool, type(None))
REFUSED_OPCODES = frozenset({"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"})
PLAIN_HINT = ("only plain lists, dicts, strings and numbers are loaded, and nothing in the file was "
              "run; re-save it with plain Python types, e.g. pickle.dump(json.loads(json.dumps(obj)), f)")
NUMPY_HINT = ("the pickle holds numpy arrays or numbers; re-save them as plain lists, e.g. "
              "pickle.dump(array.tolist(), f), or convert numpy ints with int(x)")
PANDAS_HINT = "the pickle holds a pandas object; re-save it as plain data, e.g. df.to_dict('records')"


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"refused global '{module}.{name}'", _hint_for(module))

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a persistent id", PLAIN_HINT)


def loads_plain(data: bytes, name: str = "pickle") -> Any:
    """Unpickle ``data`` holding only plain Python data; anything else raises ``UnsafePickleError``."""
    _scan_opcodes(data, name)
    value = _unpickle(data, name)
    _check_plain(value, name)
    return value


def load_plain_pickle(path: str | Path) -> Any:
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror}",
                           "check the path to the tutorial's .pckl file") from err
    return loads_plain(data, str(path))


def _unpickle(data: bytes, name: str) -> Any:
    """Python 2 ``str`` objects (the tutorial ran on Python 2) are read as UTF-8, else Latin-1."""
    refused: UnsafePickleError | None = None
    problem = "undecodable text"
    for encoding in ("utf-8", "latin-1"):
        try:
            return _PlainUnpickler(io.BytesIO(data), encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except UnsafePickleError as err:
            refused = err
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, MemoryError, OverflowError, RecursionError) as err:
            problem = f"{type(err).__name__}: {err}"
        break
    if refused is not None:
        raise UnsafePickleError(f"{name}: {refused.message}", refused.hint)
    raise DatasetError(f"{name} is not a readable pickle ({problem})",
                       "give the .pckl file the tutorial saved")


def _scan_opcodes(data: bytes, name: str) -> None:
    if not data:
        raise DatasetError(f"{name} is not a pickle file (empty file)",
                           "give the .pckl file the tutorial saved")
    problem = None
    try:
        for opcode, _arg, _pos in pickletools.genops(data):
            if opcode.name in REFUSED_OPCODES:
                raise UnsafePickleError(f"{name}: refused opcode {opcode.name}", PLAIN_HINT)
    except UnsafePickleError:
        raise
    except UnicodeDecodeError:
        problem = _unscannable(name)
    except (ValueError, EOFError) as err:
        raise DatasetError(f"{name} is not a pickle file ({err})",
                           "give the .pckl file the tutorial saved") from None
    if problem:
        raise UnsafePickleError(problem, PLAIN_HINT)


def _unscannable(name: str) -> str | None:
    """pickletools cannot scan Python 2 non-ASCII ``str`` opcodes. Extension codes (the only
    opcodes that can skip ``find_class``) then need an empty extension cache to be harmless."""
    if copyreg._extension_cache:  # type: ignore[attr-defined]
        return f"{name}: cannot scan this pickle while copyreg extension codes are cached"
    return None


def _check_plain(value: Any, name: str) -> None:
    stack: list[tuple[Any, str]] = [(value, "")]
    seen: set[int] = set()
    while stack:
        item, where = stack.pop()
        if type(item) not in ALLOWED_TYPES:
            raise UnsafePickleError(f"{name}: refused type '{type(item).__name__}' at "
                                    f"{where or 'the top level'}", PLAIN_HINT)
        if isinstance(item, (dict, list, tuple)):
            if id(item) in seen:
                continue
            seen.add(id(item))
        if isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, f"{where} (a key)"))
                stack.append((child, f"{where}[{key!r}]"))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(item))


def _hint_for(module: str) -> str:
    if module.split(".")[0] == "numpy":
        return NUMPY_HINT
    if module.split(".")[0] == "pandas":
        return PANDAS_HINT
    return PLAIN_HINT
