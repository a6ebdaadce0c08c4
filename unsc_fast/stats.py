"""Streaming layer-input second moments over D_r, collected by forward hooks.

:class:`SecondMoments` watches every covered layer of a model (``nn.Linear``, ``nn.Conv2d``,
transformers' ``Conv1D``; see :mod:`unsc_fast.layers`) by module name and accumulates ``S += XᵀX`` and the row count ``n`` for each, through the
fast ops of :mod:`unsc_fast.ops`. Statistics stream: any number of batches, chunked or not,
give the same S; :meth:`SecondMoments.all_reduce_` sums them across ``torch.distributed`` ranks.

Batches may be tensors, tuples (inputs first) or mappings such as a tokenizer's
``BatchEncoding`` (passed as ``model(**batch)``); with an ``attention_mask`` only the positions
where it is 1 enter S. Layers that receive the very same input tensor in a forward (q/k/v,
gate/up) are detected on the first forward and share one statistic (``shared``).

With ``embeddings=True`` every ``nn.Embedding`` is watched too: its input is the one-hot
vector of a token id, so its statistic is the vector of token counts over the (unmasked)
positions, kept as int64 (see :class:`unsc_fast.layer_moments.LayerMoments`).
"""
from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import helpers, layers, ops
from .geometry import ConvGeometry
from .layer_moments import LayerMoments


#: Inputs no larger than this (but not all zero) are refused for statistics of that dtype:
#: their squares fall into the subnormal range (float32: below 2^-120) and S loses them, so
#: the layer would silently lose its protection.
TINY = {torch.float32: 2.0 ** -60, torch.float64: 2.0 ** -500}


def supported_layers(model: nn.Module, names: Iterable[str] | str | None = None, *,
                     embeddings: bool = False) -> dict[str, nn.Module]:
    """The covered layers of ``model`` by module name (see :func:`unsc_fast.layers.select_layers`:
    names or patterns, tied weights left out unless every use is covered)."""
    return layers.select_layers(model, names, embeddings=embeddings)


def _new_moments(module: nn.Module, dtype: torch.dtype, include_bias: bool,
                 device: torch.device | None = None) -> LayerMoments:
    dev = module.weight.device if device is None else device
    kind = layers.kind_of(module, embeddings=True)
    if kind == "embedding":             # diagonal: the token counts, exact in int64
        return LayerMoments(kind, torch.zeros(1, module.num_embeddings, dtype=torch.int64,
                                              device=dev), 0, None, None, None)
    geom = ConvGeometry.of(module) if kind == "conv2d" else None
    g, d = layers.groups_of(module), layers.input_dim(module)
    S = torch.zeros(g, d, d, dtype=dtype, device=dev)
    colsum = torch.zeros(g, d, dtype=dtype, device=dev) if include_bias else None
    return LayerMoments(kind, S, 0, colsum, geom, torch.zeros((), dtype=torch.float64,
                                                              device=dev))


@dataclass
class SecondMoments:
    """Accumulator of layer-input second moments for the supported layers of a model.

    Example::

        moments = SecondMoments(model).collect(retain_loader)
        bases = NullSpace.from_moments(moments, Energy(0.99))

    Args:
        model: the trained model θ_o (put in eval mode while collecting).
        layers: module names or ``fnmatch`` patterns to watch (``"model.layers.*.mlp.*"``);
            default every covered layer whose weight is not tied to another module's.
        dtype: accumulation dtype of S, ``torch.float32`` (default) or ``torch.float64``.
        include_bias: also keep column sums, for bases that cover the bias as a 1-feature.
        backend: force a backend for the accumulate ops (see :mod:`unsc_fast.dispatch`).
        check_inputs: in :meth:`collect`, refuse an input batch holding NaN/Inf before the
            forward, so it leaves no trace (one pass over the batch and one device sync).
        device: where S is kept (default: each layer's weight device), e.g. the CPU while the
            model runs on a GPU; inputs are copied there to be accumulated.
        share_inputs: layers fed the very same input tensor share one statistic (``shared``
            maps each follower to the layer whose statistic it uses).
        embeddings: also watch every ``nn.Embedding`` (default: they are not covered and stay
            frozen). Its statistic is the int64 vector of token counts over the positions
            where ``attention_mask`` is 1 (S = diag(counts): the input of token t is the
            one-hot e_t); ``dtype`` does not apply to it. An embedding whose weight an output
            head shares (tied) is taken together with that head, each use with its own basis.
    """

    model: nn.Module
    layers: Iterable[str] | None = None
    dtype: torch.dtype = torch.float32
    include_bias: bool = False
    backend: str | None = None
    check_inputs: bool = True
    device: torch.device | str | None = None
    share_inputs: bool = True
    embeddings: bool = False
    moments: dict[str, LayerMoments] = field(init=False)
    shared: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        if self.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        if isinstance(self.layers, str):  # one name, not its characters
            self.layers = [self.layers]
        self._modules = supported_layers(self.model, self.layers, embeddings=self.embeddings)
        self.layers = list(self._modules)
        dev = None if self.device is None else torch.device(self.device)
        self.moments = {n: _new_moments(m, self.dtype, self.include_bias, dev)
                        for n, m in self._modules.items()}
        self.shared = {}
        self._sharing_known = not self.share_inputs
        self._inputs_seen: dict[int, tuple[str, Tensor]] = {}
        self._mask: Tensor | None = None
        self._updates = 0               # layer updates so far (to tell a torn batch)
        self._torn: str | None = None   # why the statistics are incomplete, if they are

    # -- accumulation -------------------------------------------------------------------
    @torch.no_grad()
    def update(self, name: str, x: Tensor) -> None:
        """Add one batch of inputs ``x`` of layer ``name`` (as the layer receives them)."""
        lm = self.moments[self.shared.get(name, name)]
        if x.device != lm.S.device:
            x = x.to(lm.S.device)
        if lm.diagonal:
            self._count_tokens(name, lm, x)
            return
        if lm.kind == "conv2d":
            if self._mask is not None:
                raise ValueError(f"layer {name!r}: an attention_mask cannot select conv inputs")
            x = x.unsqueeze(0) if x.dim() == 3 else x
            ops.accumulate_conv_(lm.S, x, lm.geometry, backend=self.backend)
            rows = x.shape[0] * _conv_positions(x, lm.geometry)
            if lm.colsum is not None:
                lm.colsum += _conv_colsum(x, lm.geometry).to(lm.colsum.dtype)
        else:
            x = self._unmasked_rows(name, x)
            ops.accumulate_(lm.S[0], x, backend=self.backend)
            rows = x.shape[0]
            if lm.colsum is not None:
                lm.colsum[0] += x.sum(0, dtype=lm.colsum.dtype)
        lm.n += rows
        self._updates += 1
        if lm.peak is not None and x.numel():
            lm.peak = torch.maximum(lm.peak, x.detach().abs().amax().to(lm.peak))

    def _count_tokens(self, name: str, lm: LayerMoments, ids: Tensor) -> None:
        """An embedding's S += diag(counts of the unmasked token ids); checked before adding."""
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"embedding {name!r}: its input is {ids.dtype}, not token ids")
        mask = self._mask
        if mask is not None:
            if ids.shape != mask.shape:
                try:        # e.g. position ids (1, T) of a (B, T) batch
                    ids = ids.expand(mask.shape)
                except RuntimeError:
                    raise ValueError(f"embedding {name!r}: its input {tuple(ids.shape)} does"
                                     " not line up with the attention_mask"
                                     f" {tuple(mask.shape)}; leave it out (layers=)") from None
            ids = ids[mask.to(ids.device)]
        ids = ids.reshape(-1).long()
        vocab = lm.dim
        lo, hi = torch.stack(torch.aminmax(ids)).tolist() if ids.numel() else (0, 0)  # 1 sync
        if lo < 0 or hi >= vocab:
            raise IndexError(f"embedding {name!r}: token ids outside [0, {vocab})")
        lm.S[0] += torch.bincount(ids, minlength=vocab)
        lm.n += ids.numel()
        self._updates += 1

    def _unmasked_rows(self, name: str, x: Tensor) -> Tensor:
        """The (rows, d) input vectors of a Linear/Conv1D, without masked (padding) positions."""
        rows = x.reshape(-1, x.shape[-1])
        mask = self._mask
        if mask is None:
            return rows
        if x.shape[:-1] != mask.shape and x.shape[:-1].numel() != mask.numel():
            raise ValueError(f"layer {name!r}: its input {tuple(x.shape)} does not line up with"
                             f" the attention_mask {tuple(mask.shape)}; leave it out (layers=)")
        return rows[mask.reshape(-1).to(rows.device)]

    @contextlib.contextmanager
    def hooks(self) -> Iterator["SecondMoments"]:
        """Accumulate the inputs of every watched layer during forwards inside this block."""
        handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self._modules.items()]
        handles.append(self.model.register_forward_pre_hook(self._forward_begins))
        handles.append(self.model.register_forward_hook(self._forward_ends))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self._inputs_seen.clear()

    def _forward_begins(self, module: nn.Module, args) -> None:
        self._inputs_seen.clear()

    def _forward_ends(self, module: nn.Module, args, output) -> None:
        # The first forward decided which layers share an input: drop their own statistics.
        if not self._sharing_known:
            self._sharing_known = True
            for follower in self.shared:
                self.moments.pop(follower, None)
        self._inputs_seen.clear()

    def _shares_with(self, name: str, x: Tensor) -> str | None:
        """The earlier layer of this forward that received the very same tensor, if its
        statistic can stand for this layer's (same kind of input vectors, same geometry)."""
        seen = self._inputs_seen.get(id(x))
        if seen is None or seen[1] is not x:
            return None
        lead = self.shared.get(seen[0], seen[0])
        a, b = self.moments[lead], self.moments.get(name) or self.moments[self.shared[name]]
        same = a.kind == b.kind and a.geometry == b.geometry
        if same and a.S.shape == b.S.shape and (a.colsum is None) == (b.colsum is None):
            return lead
        return None

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if not self._sharing_known:
                lead = self._shares_with(name, x)
                if lead is not None:
                    self.shared[name] = lead
                    return
            elif name in self.shared:
                if self._shares_with(name, x) != self.shared[name]:
                    raise RuntimeError(f"layer {name!r} shared its input with"
                                       f" {self.shared[name]!r} in the first forward but not"
                                       " now; use share_inputs=False for this model")
                return
            self._inputs_seen.setdefault(id(x), (name, x))
            self.update(name, x.detach())
        return hook

    @torch.no_grad()
    def collect(self, data: Iterable, *, device: torch.device | str | None = None,
                max_samples: int | None = None, max_tokens: int | None = None,
                progress: bool = True) -> "SecondMoments":
        """Run the model (eval mode) over ``data`` and accumulate; returns ``self``.

        ``data`` yields input tensors, ``(inputs, labels, ...)`` tuples, or mappings (a dict
        or ``BatchEncoding`` of tensors, passed as ``model(**batch)``). With an
        ``attention_mask`` in a mapping, only the positions where it is 1 are counted.
        ``max_samples`` caps the number of samples (sequences), ``max_tokens`` the number of
        counted tokens (whole sequences: the batch that crosses it is cut; the first sequence
        is always taken). Raises on empty data.

        A batch the model cannot take (wrong shape, dtype or device) raises before any layer
        has seen it: each new input shape is first tried on one sample without the hooks.
        """
        for what, cap in (("max_samples", max_samples), ("max_tokens", max_tokens)):
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
                raise ValueError(f"{what} must be a positive whole number or None, got {cap!r}")
        device = torch.device(device) if device is not None else helpers.model_device(self.model)
        was_training = self.model.training
        self.model.eval()
        seen = tokens = 0
        tried: set[tuple] = set()
        try:
            with helpers.progress(data, progress, "second moments") as batches:
                for i, batch in enumerate(batches):
                    inputs = _as_inputs(batch, i)
                    if max_samples is not None:
                        inputs = _rows(inputs, max(0, max_samples - seen))
                    if max_tokens is not None:
                        inputs = _within_tokens(inputs, max_tokens - tokens, first=tokens == 0)
                    n = _batch_len(inputs)
                    if n == 0:
                        break
                    inputs = {k: v.to(device) if isinstance(v, Tensor) else v
                              for k, v in inputs.items()}
                    if self.check_inputs:
                        for k, v in inputs.items():
                            if isinstance(v, Tensor) and v.is_floating_point() and \
                                    not bool(torch.isfinite(v).all()):
                                raise ValueError(f"input batch {i} holds NaN or Inf; the"
                                                 " statistics are unchanged by it")
                    key = tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in inputs.items()
                                if isinstance(v, Tensor))
                    if key not in tried:
                        try:
                            _call(self.model, _rows(inputs, 1))
                        except Exception as exc:
                            shape = tuple(_first_tensor(inputs).shape)
                            raise _reworded(exc, f"input batch {i} {shape} does not fit the"
                                            f" model ({exc}); the statistics are unchanged by"
                                            " it") from exc
                        tried.add(key)
                    mask = inputs.get("attention_mask")
                    self._mask = None if mask is None else mask.bool()
                    before = self._updates
                    try:
                        with self.hooks():
                            _call(self.model, inputs)
                    except BaseException:
                        if self._updates != before:  # some layers saw this batch, others not
                            self._torn = (f"batch {i} failed in the middle of the forward,"
                                          " after some layers had accumulated it")
                        raise
                    finally:
                        self._mask = None
                    seen += n
                    tokens += _token_count(inputs)
        finally:
            self.model.train(was_training)
        if seen == 0:
            raise ValueError("the retain data D_r is empty: no statistics to collect")
        self.check_finite()
        return self

    def check_whole(self) -> None:
        """Raise if a failed forward left some layers with a batch that others lack: such
        statistics describe no data set, so they are never used, saved or merged."""
        if self._torn is not None:
            raise RuntimeError(f"these statistics are incomplete ({self._torn}); collect"
                               " again into a new SecondMoments")

    def check_finite(self) -> None:
        """Raise if any statistic holds NaN or Inf (e.g. from a diverged model), or if a
        layer's inputs were so small that their squares underflow S's dtype (see ``TINY``):
        no layer loses its protection silently.

        The diagonal suffices: a non-finite input x makes Σx² of its feature NaN or Inf.
        """
        self.check_whole()
        bad = [n for n, lm in self.moments.items() if not torch.isfinite(lm.diag()).all()]
        if bad:
            hint = " or use float64 statistics (dtype=torch.float64; --stats-dtype float64)" \
                if self.dtype == torch.float32 else ""
            raise ValueError(f"second moments of layers {bad} contain NaN or Inf (inputs"
                             " were non-finite or overflowed); check the model and the data"
                             f"{hint}")
        tiny = TINY[self.dtype]
        for n, lm in self.moments.items():
            peak = None if lm.peak is None else float(lm.peak)
            if peak is not None and 0 < peak <= tiny:
                fix = "use float64 statistics (SecondMoments(..., dtype=torch.float64); --stats-dtype float64)" \
                    if self.dtype == torch.float32 else "rescale the layer's inputs"
                raise ValueError(f"layer {n!r}: its inputs are at most {peak:.3g} in"
                                 f" magnitude, so their squares underflow {self.dtype}"
                                 " statistics and the layer would lose its protection on"
                                 f" D_r; {fix}")

    # -- combining and saving -----------------------------------------------------------
    def merge_(self, other: "SecondMoments") -> "SecondMoments":
        """Add the statistics of ``other`` (same layers) into ``self``."""
        self.check_whole()
        other.check_whole()
        if other.moments.keys() != self.moments.keys() or other.shared != self.shared:
            raise ValueError("cannot merge statistics of different layer sets (or of layers"
                             " that share inputs differently)")
        for name, lm in self.moments.items():
            o = other.moments[name]
            if o.S.shape != lm.S.shape:
                raise ValueError(f"layer {name!r}: shapes {tuple(o.S.shape)} and"
                                 f" {tuple(lm.S.shape)} differ")
            lm.S += o.S.to(lm.S) if lm.diagonal else torch.triu(o.S.to(lm.S))
            lm.n += o.n
            if lm.peak is not None:
                lm.peak = None if o.peak is None else torch.maximum(lm.peak, o.peak.to(lm.peak))
            if lm.colsum is not None and o.colsum is not None:
                lm.colsum += o.colsum.to(lm.colsum)
        return self

    def all_reduce_(self, group=None, bucket_mb: float = 64.0) -> "SecondMoments":
        """Sum the statistics over the ranks of ``torch.distributed`` ``group``, in place.

        Only the upper triangle of each S travels, in buckets of at most ``bucket_mb`` MiB;
        ranks holding different layers or shapes raise instead of hanging. See
        :func:`unsc_fast.distributed.all_reduce_moments_`.
        """
        from .distributed import all_reduce_moments_
        self.check_whole()
        return all_reduce_moments_(self, group=group, bucket_mb=bucket_mb)

    def state_dict(self) -> dict:
        """Per layer: kind, upper-triangular S, n, colsum and the conv geometry as plain
        values (loadable with ``torch.load(weights_only=True)``); a layer that shares another's
        statistic is stored as ``{"same_as": leader}``."""
        self.check_whole()
        state = {}
        for name in self.layers:
            if name in self.shared:
                state[name] = {"same_as": self.shared[name]}
                continue
            lm = self.moments[name]
            state[name] = {"kind": lm.kind, "S": lm.S.clone() if lm.diagonal
                           else torch.triu(lm.S), "n": lm.n,
                           "colsum": lm.colsum,
                           "geometry": None if lm.geometry is None else asdict(lm.geometry)}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Replace the statistics with those of :meth:`state_dict` (same layers and shapes;
        checked for every layer before any is written)."""
        if set(state) != set(self.layers):
            raise ValueError(f"statistics are for layers {sorted(state)}, this model has"
                             f" {sorted(self.layers)}")
        shared = {n: s["same_as"] for n, s in state.items() if "same_as" in s}
        for name, lead in shared.items():
            if lead not in state or "same_as" in state[lead]:
                raise ValueError(f"layer {name!r} shares the statistic of {lead!r}, which is"
                                 " not a stored statistic")
        state = {n: s for n, s in state.items() if n not in shared}
        own = {n: self.moments.get(n) or _new_moments(self._modules[n], self.dtype,
                                                      self.include_bias,
                                                      None if self.device is None
                                                      else torch.device(self.device))
               for n in state}
        for name, s in state.items():
            kind = own[name].kind
            if s.get("kind", kind) != kind:
                raise ValueError(f"layer {name!r}: saved statistics are of kind"
                                 f" {s.get('kind')!r}, the model's layer is {kind!r}")
            if tuple(s["S"].shape) != tuple(own[name].S.shape):
                raise ValueError(f"layer {name!r}: saved S is {tuple(s['S'].shape)}, the model"
                                 f" needs {tuple(own[name].S.shape)}")
            check_saved_moments(name, s["S"], s["n"], s.get("colsum"), kind=kind)
        self.moments, self.shared, self._sharing_known = own, shared, True
        for name, s in state.items():
            lm = self.moments[name]
            lm.S.copy_(s["S"])
            lm.n = int(s["n"])
            lm.peak = None                     # unknown for saved statistics
            if s.get("colsum") is not None and lm.colsum is not None:
                lm.colsum.copy_(s["colsum"])

    def save(self, path: str | os.PathLike) -> None:
        """Save with ``torch.save``, atomically (a temporary file, then a rename)."""
        from .io import atomic_save
        atomic_save(path, lambda f: torch.save(self.state_dict(), f))

    def load(self, path: str | os.PathLike) -> "SecondMoments":
        """Load statistics written by :meth:`save` (tensors and plain values only: the file
        cannot run code)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{str(path)!r} is not a statistics file of SecondMoments.save"
                             f" ({str(exc).splitlines()[0]})") from None
        if not isinstance(state, dict) or not all(
                isinstance(v, dict) and ("S" in v or set(v) == {"same_as"})
                for v in state.values()):
            raise ValueError(f"{str(path)!r} is not a statistics file of SecondMoments.save")
        self.load_state_dict(state)
        return self


_POSITIONAL = "__input__"  # the key of a positional input in the normalised batch


def _as_inputs(batch, i: int) -> dict:
    """A batch as keyword inputs: a mapping as it is, else its (first) tensor positionally."""
    if isinstance(batch, Mapping):
        out = dict(batch)
        if not any(isinstance(v, Tensor) for v in out.values()):
            raise TypeError(f"batch {i} is a mapping without tensors")
        return out
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, Tensor):
        raise TypeError(f"batch {i} is a {type(x).__name__}; expected a tensor, a tuple whose"
                        " first item is one, or a mapping of tensors (e.g. a BatchEncoding)")
    return {_POSITIONAL: x}


def _call(model: nn.Module, inputs: dict):
    if _POSITIONAL in inputs:
        return model(inputs[_POSITIONAL])
    return model(**inputs)


def _first_tensor(inputs: dict) -> Tensor:
    return next(v for v in inputs.values() if isinstance(v, Tensor))


def _batch_len(inputs: dict) -> int:
    return len(_first_tensor(inputs))


def _rows(inputs: dict, n: int) -> dict:
    """The first n samples of every tensor of the batch (other values as they are)."""
    return {k: v[:n] if isinstance(v, Tensor) and v.dim() else v for k, v in inputs.items()}


def _token_count(inputs: dict) -> int:
    mask = inputs.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    ids = inputs.get("input_ids", _first_tensor(inputs))
    return ids.numel() if ids.dim() <= 2 else len(ids)


def _within_tokens(inputs: dict, budget: int, first: bool) -> dict:
    """The leading sequences whose tokens fit ``budget``; the ``first`` batch keeps at least
    one, so a budget below one sequence's length still gives statistics."""
    if budget <= 0:
        return _rows(inputs, 0)
    mask = inputs.get("attention_mask")
    ids = inputs.get("input_ids", _first_tensor(inputs))
    if mask is not None:
        per = mask.reshape(len(mask), -1).sum(1)
    elif ids.dim() <= 2:
        per = torch.full((len(ids),), ids[0].numel() if len(ids) else 0)
    else:
        per = torch.ones(len(ids), dtype=torch.long)
    fits = int((torch.cumsum(per, 0) <= budget).sum())
    return _rows(inputs, max(fits, 1) if first else fits)


def check_saved_moments(name: str, S, n, colsum=None, kind: str | None = None) -> None:
    """Raise ``ValueError`` unless saved statistics can be those of real inputs: ``n`` an
    integer >= 1 (0 only with S = 0), S a finite floating tensor whose full form is symmetric
    (an upper-triangular S is read as its upper triangle) with a non-negative diagonal.

    An embedding's S (``kind="embedding"``) is its diagonal: integer token counts >= 0 that
    sum to ``n``."""
    if isinstance(n, Tensor) and n.numel() == 1 and not n.is_floating_point():
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"layer {name!r}: sample count n = {n!r} is not an integer >= 0")
    if kind in layers.DIAGONAL_KINDS:
        if not isinstance(S, Tensor) or S.is_floating_point() or S.is_complex() \
                or S.dtype == torch.bool:
            raise ValueError(f"layer {name!r}: an embedding's S must be integer token counts")
        if bool((S < 0).any()):
            raise ValueError(f"layer {name!r}: a token count is negative ({int(S.min())})")
        if int(S.sum()) != n:
            raise ValueError(f"layer {name!r}: the token counts sum to {int(S.sum())}, but"
                             f" n = {n}")
        return
    if not isinstance(S, Tensor) or not S.is_floating_point():
        raise ValueError(f"layer {name!r}: S is not a floating tensor")
    if not bool(torch.isfinite(S).all()):
        raise ValueError(f"layer {name!r}: S holds NaN or Inf")
    if n == 0 and bool(S.any()):
        raise ValueError(f"layer {name!r}: n = 0 but S is not zero")
    lower = torch.tril(S, -1)
    if bool(lower.any()):                      # a full S must be symmetric
        Sd = S.double()
        asym = float((Sd - Sd.mT).abs().max())
        if asym > 1e-5 * max(float(Sd.abs().max()), 1e-300):
            raise ValueError(f"layer {name!r}: S is not symmetric (max |S − Sᵀ| = {asym:.3g})")
    diag = torch.diagonal(S, dim1=-2, dim2=-1)
    if bool((diag < 0).any()):
        raise ValueError(f"layer {name!r}: S has a negative diagonal entry"
                         f" ({float(diag.min()):.3g}); a sum of squares cannot be")
    if colsum is not None and not bool(torch.isfinite(colsum).all()):
        raise ValueError(f"layer {name!r}: the column sums hold NaN or Inf")


def _reworded(exc: Exception, message: str) -> Exception:
    """The same kind of error with a message that says where it came from."""
    try:
        return type(exc)(message)
    except Exception:  # an exception type that takes other arguments
        return RuntimeError(message)


def _conv_positions(x: Tensor, g: ConvGeometry) -> int:
    oh, ow = g.output_size(x.shape[-2], x.shape[-1])
    return max(oh, 0) * max(ow, 0)


def _conv_colsum(x: Tensor, g: ConvGeometry) -> Tensor:
    """Sum of all patch vectors per group, (groups, d). Padding (every mode copies values) and
    unfold are linear, so sum the batch first and unfold one image instead of N."""
    xs = x.sum(0, keepdim=True, dtype=torch.float64)
    if any(g.pad):
        xs = F.pad(xs, g.pad, mode="constant" if g.padding_mode == "zeros" else g.padding_mode)
    cols = F.unfold(xs, g.kernel_size, dilation=g.dilation, stride=g.stride)  # (1, C·k, L)
    return cols.sum(-1).view(g.groups, -1)
