"""The price sheet an admin edits: what a core-hour, a GB-hour, a GPU-hour, a million requests and a
function GB-second cost, how finely time is billed, and the rate classes (on-demand, reserved, spot).

Design choices, and why:
- Shaped like OpenCost's custom pricing so a sheet written for OpenCost works here: its hourly keys
  `CPU`, `RAM`, `GPU`, `spotCPU`, `spotRAM`, `spotGPU` (numbers or numeric strings, as OpenCost writes
  them) are read as `cpu_core_hour` & co.; its other keys (storage, network egress, labels) are
  accepted and listed in `PriceSheet.ignored`, except `spotLabel`/`spotLabelValue`, which say which
  nodes are spot on Kubernetes. Any other unknown key is an error naming it: a typo in a price sheet
  is a wrong bill, not a default.
- Every number is bounded (no negative price, discounts in [0, 1), billing units from 1 ms to an
  hour) and every error names the key and says what is expected.
- Functions are billed per call in one of the four units the ledger sums exactly (1 ms, 100 ms, 1 s,
  60 s: `billed_ms_*`), as Lambda bills; servers and runs in any unit from 1 ms to 1 h with a minimum
  charge per interval, as EC2 bills per second with a 60 s minimum.
- `basis` says what a CPU or memory hour is counted from: the request (what was reserved), the usage
  (what was measured) or, as OpenCost prices, the larger of the two.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratolab.errors import InvalidInput
from stratolab.usage.windows import parse_span

#: the billing units a function call may be rounded up to (ms): the ledger keeps an exact sum for each
FUNCTION_UNITS_MS = (1, 100, 1000, 60000)
#: ledger kinds -> the price sheet's kind names (granularity and minimum charge are set per these)
KIND_CLASS = {"server": "servers", "run": "runs", "trial": "runs", "pipeline_step": "runs",
              "function_instance": "functions", "function_calls": "functions"}
SHEET_KINDS = ("servers", "runs", "functions")
RATE_CLASSES = ("on-demand", "reserved", "spot")
BASES = ("request", "usage", "max")
#: OpenCost custom pricing keys read as ours
OPENCOST_PRICES = {"CPU": "cpu_core_hour", "RAM": "memory_gb_hour", "GPU": "gpu_hour",
                   "spotCPU": "spot_cpu_core_hour", "spotRAM": "spot_memory_gb_hour", "spotGPU": "spot_gpu_hour"}
#: OpenCost keys that price what the platform does not meter (storage, network): accepted, unused
OPENCOST_IGNORED = frozenset({
    "provider", "description", "storage", "zoneNetworkEgress", "regionNetworkEgress", "internetNetworkEgress",
    "firstFiveForwardingRulesCost", "additionalForwardingRuleCost", "LBIngressDataCost", "customPricesEnabled",
    "defaultIdle", "azureSubscriptionID", "azureClientID", "azureClientSecret", "azureTenantID", "azureBillingRegion",
    "azureBillingAccount", "azureOfferDurableID", "currencyCode", "discount", "negotiatedDiscount", "region",
    "GpuLabel", "GpuLabelValue", "awsSpotDataRegion", "awsSpotDataBucket", "awsSpotDataPrefix", "projectID",
    "athenaBucketName", "athenaRegion", "athenaDatabase", "athenaTable", "masterPayerARN", "clusterName",
    "sharedNamespaces", "sharedLabelNames", "sharedLabelValues", "shareTenancyCosts", "readOnly", "editorAccess",
    "kubecostToken", "goggleAnalyticsID", "defaultLBPrice",
})
OURS = frozenset({
    "currency", "cpu_core_hour", "memory_gb_hour", "gpu_hour", "per_million_requests", "function_gb_second",
    "provisioned_gb_second", "granularity", "minimum_charge", "rate_classes", "basis",
    "spot_cpu_core_hour", "spot_memory_gb_hour", "spot_gpu_hour", "spotLabel", "spotLabelValue",
})
#: the most anything may cost per hour, per million requests or per GB-second: a bound on typos
MAX_PRICE = 1_000_000.0
MAX_GRANULARITY_MS = 3_600_000
MAX_MINIMUM_S = 86_400.0
_CURRENCY = re.compile(r"^[A-Za-z$€£¥₹ ]{1,12}$")


@dataclass(frozen=True)
class GpuPrices:
    """Hourly GPU prices by model; `default` for a model not named (and for servers without a model)."""

    default: float
    by_model: Mapping[str, float] = field(default_factory=dict)

    def price(self, model: str | None) -> float:
        """Exact model name first, then the longest listed name the model contains ("H100" prices
        "NVIDIA H100 80GB HBM3"), case-insensitive, then the default."""
        if not model:
            return self.default
        if model in self.by_model:
            return self.by_model[model]
        lowered = model.lower()
        best = None
        for name, price in self.by_model.items():
            if name.lower() in lowered and (best is None or len(name) > len(best[0])):
                best = (name, price)
        return best[1] if best else self.default

    def to_json(self) -> float | dict[str, float]:
        return {**self.by_model, "default": self.default} if self.by_model else self.default


@dataclass(frozen=True)
class Baseline:
    """What a reserved commitment covers, billed whether used or not."""

    cpu_cores: float = 0.0
    memory_gb: float = 0.0
    gpus: int = 0
    gpu_model: str | None = None


@dataclass(frozen=True)
class PriceSheet:
    currency: str = "USD"
    cpu_core_hour: float = 0.0
    memory_gb_hour: float = 0.0
    gpu_hour: GpuPrices = GpuPrices(0.0)
    per_million_requests: float = 0.0
    #: a function call's GB-second (None: the memory GB-hour's price / 3600)
    function_gb_second: float | None = None
    #: an instance kept warm by min_instances (None: the function GB-second's price)
    provisioned_gb_second: float | None = None
    #: billing unit per sheet kind, in ms
    granularity_ms: Mapping[str, int] = field(default_factory=lambda: {"servers": 1000, "runs": 1000, "functions": 1})
    #: minimum charge per interval per sheet kind, in seconds (servers and runs; functions: instances only)
    minimum_charge_s: Mapping[str, float] = field(default_factory=lambda: {"servers": 0.0, "runs": 0.0, "functions": 0.0})
    reserved_discount: float = 0.0
    reserved_baseline: Baseline = Baseline()
    spot_discount: float = 0.0
    spot_cpu_core_hour: float | None = None
    spot_memory_gb_hour: float | None = None
    spot_gpu_hour: GpuPrices | None = None
    #: the node label (and value) that marks spot capacity on Kubernetes (OpenCost's spotLabel)
    spot_label: tuple[str, str] | None = None
    basis: str = "request"
    #: OpenCost keys read but not used (storage, network): shown so an admin knows
    ignored: tuple[str, ...] = ()

    # the prices as a bill uses them ---------------------------------------------------------------
    def gb_second(self) -> float:
        return self.function_gb_second if self.function_gb_second is not None else self.memory_gb_hour / 3600.0

    def instance_gb_second(self) -> float:
        return self.provisioned_gb_second if self.provisioned_gb_second is not None else self.gb_second()

    def cpu_price(self, spot: bool) -> float:
        if not spot:
            return self.cpu_core_hour
        return self.spot_cpu_core_hour if self.spot_cpu_core_hour is not None else self.cpu_core_hour * (1 - self.spot_discount)

    def memory_price(self, spot: bool) -> float:
        if not spot:
            return self.memory_gb_hour
        return (self.spot_memory_gb_hour if self.spot_memory_gb_hour is not None
                else self.memory_gb_hour * (1 - self.spot_discount))

    def gpu_price(self, model: str | None, spot: bool) -> float:
        if not spot:
            return self.gpu_hour.price(model)
        if self.spot_gpu_hour is not None:
            return self.spot_gpu_hour.price(model)
        return self.gpu_hour.price(model) * (1 - self.spot_discount)

    def function_unit_ms(self) -> int:
        return self.granularity_ms["functions"]

    def to_json(self) -> dict[str, Any]:
        """The sheet as `parse_price_sheet` reads it back (the service shows it to admins)."""
        out: dict[str, Any] = {
            "currency": self.currency, "cpu_core_hour": self.cpu_core_hour, "memory_gb_hour": self.memory_gb_hour,
            "gpu_hour": self.gpu_hour.to_json(), "per_million_requests": self.per_million_requests,
            "granularity": {k: format_ms(v) for k, v in self.granularity_ms.items()},
            "minimum_charge": {k: f"{v:g}s" for k, v in self.minimum_charge_s.items() if v},
            "rate_classes": {
                "reserved": {"discount": self.reserved_discount,
                             "baseline": {"cpu_cores": self.reserved_baseline.cpu_cores,
                                          "memory_gb": self.reserved_baseline.memory_gb,
                                          "gpus": self.reserved_baseline.gpus,
                                          **({"gpu_model": self.reserved_baseline.gpu_model}
                                             if self.reserved_baseline.gpu_model else {})}},
                "spot": {"discount": self.spot_discount}},
            "basis": self.basis,
        }
        for key in ("function_gb_second", "provisioned_gb_second", "spot_cpu_core_hour", "spot_memory_gb_hour"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.spot_gpu_hour is not None:
            out["spot_gpu_hour"] = self.spot_gpu_hour.to_json()
        if self.spot_label:
            out["spotLabel"], out["spotLabelValue"] = self.spot_label
        return out


def format_ms(ms: int) -> str:
    """1 -> "1ms", 1000 -> "1s", 60000 -> "60s" (as the sheet writes units)."""
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


# parsing -----------------------------------------------------------------------------------------

def _number(value: Any, key: str, *, low: float = 0.0, high: float = MAX_PRICE, what: str = "a price",
            open_high: bool = False) -> float:
    """A finite number in [low, high] (or [low, high)); numeric strings allowed (OpenCost writes "0.031611")."""
    if isinstance(value, bool):
        raise InvalidInput(f"{key} must be {what} (a number), not {_shown(value)}", field=key)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidInput(f"{key} must be {what} (a number), not {_shown(value)}", field=key) from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{key} must be {what} (a number), not {_shown(value)}", field=key)
    upper_ok = value < high if open_high else value <= high
    if value < low or not upper_ok:
        bound = f"below {high:g}" if open_high else f"at most {high:g}"
        raise InvalidInput(f"{key} must be {what} of at least {low:g} and {bound}, not {_shown(value)}", field=key)
    return float(value)


def _shown(value: Any, limit: int = 40) -> str:
    """`value` as an error message quotes it, cut short (a value can be a whole pasted document)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _mapping(value: Any, key: str, allowed: tuple[str, ...] | frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{key} must be a mapping with keys among {', '.join(sorted(allowed))}", field=key)
    for k in value:
        if k not in allowed:
            raise InvalidInput(f"{key}.{k} is not a known key: expected one of {', '.join(sorted(allowed))}",
                               field=f"{key}.{k}")
    return value


def _gpu_prices(value: Any, key: str) -> GpuPrices:
    if isinstance(value, Mapping):
        by_model: dict[str, float] = {}
        for model, price in value.items():
            if not isinstance(model, str) or not model.strip():
                raise InvalidInput(f"{key} must map GPU model names to hourly prices", field=key)
            by_model[model] = _number(price, f"{key}.{model}", what="an hourly price")
        # a sheet that prices some models keeps the built-in price for the others (a GPU left out is not free)
        default = by_model.pop("default", DEFAULT_SHEET.gpu_hour.default)
        return GpuPrices(default, by_model)
    return GpuPrices(_number(value, key, what="an hourly price"))


def _granularity(value: Any, key: str, kind: str) -> int:
    seconds = parse_span(value, key)
    ms = round(seconds * 1000)
    if abs(ms - seconds * 1000) > 1e-6 or ms < 1:
        raise InvalidInput(f"{key} must be a whole number of milliseconds, not {_shown(value)}", field=key)
    if kind == "functions" and ms not in FUNCTION_UNITS_MS:
        raise InvalidInput(f"{key} must be one of 1ms, 100ms, 1s, 60s (the units function calls are summed in), "
                           f"not {_shown(value)}", field=key)
    if ms > MAX_GRANULARITY_MS:
        raise InvalidInput(f"{key} must be at most 1h, not {_shown(value)}", field=key)
    return ms


def parse_price_sheet(data: Mapping[str, Any] | None) -> PriceSheet:
    """A PriceSheet from the admin's mapping (over the built-in default: keys not given keep the
    default's value); InvalidInput naming the key when something is wrong."""
    base = DEFAULT_SHEET
    if data is None:
        return base
    if not isinstance(data, Mapping):
        raise InvalidInput("the price sheet must be a mapping of keys to prices", field="prices")
    values: dict[str, Any] = {}
    written: dict[str, str] = {}  # our key -> the key the sheet used (OpenCost's), for errors
    ignored = []
    for key, value in data.items():
        if key in OPENCOST_PRICES:
            ours = OPENCOST_PRICES[key]
            if ours in data:
                raise InvalidInput(f"{key} and {ours} are the same price (OpenCost's name and ours): give one",
                                   field=key)
            values[ours] = value
            written[ours] = key
        elif key in OURS:
            values[key] = value
        elif key in OPENCOST_IGNORED:
            ignored.append(key)
        else:
            raise InvalidInput(f"{key} is not a price sheet key: expected one of {', '.join(sorted(OURS))} "
                               f"(or OpenCost's {', '.join(OPENCOST_PRICES)})", field=key)

    kw: dict[str, Any] = {"ignored": tuple(sorted(ignored))}
    if "currency" in values:
        currency = values["currency"]
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            raise InvalidInput(f"currency must be a short name such as USD, EUR or credits, not {_shown(currency)}",
                               field="currency")
        kw["currency"] = currency.strip()
    for key in ("cpu_core_hour", "memory_gb_hour", "spot_cpu_core_hour", "spot_memory_gb_hour"):
        if key in values:
            kw[key] = _number(values[key], written.get(key, key), what="an hourly price")
    if "per_million_requests" in values:
        kw["per_million_requests"] = _number(values["per_million_requests"], "per_million_requests")
    for key in ("function_gb_second", "provisioned_gb_second"):
        if key in values:
            kw[key] = _number(values[key], key, what="a price per GB-second", high=1000.0)
    if "gpu_hour" in values:
        kw["gpu_hour"] = _gpu_prices(values["gpu_hour"], written.get("gpu_hour", "gpu_hour"))
    if "spot_gpu_hour" in values:
        kw["spot_gpu_hour"] = _gpu_prices(values["spot_gpu_hour"], written.get("spot_gpu_hour", "spot_gpu_hour"))
    if "granularity" in values:
        given = _mapping(values["granularity"], "granularity", SHEET_KINDS)
        kw["granularity_ms"] = {**base.granularity_ms,
                                **{k: _granularity(v, f"granularity.{k}", k) for k, v in given.items()}}
    if "minimum_charge" in values:
        given = _mapping(values["minimum_charge"], "minimum_charge", SHEET_KINDS)
        minimum = dict(base.minimum_charge_s)
        for k, v in given.items():
            seconds = 0.0 if v in (0, "0", "0s") else parse_span(v, f"minimum_charge.{k}")
            if seconds > MAX_MINIMUM_S:
                raise InvalidInput(f"minimum_charge.{k} must be at most 24h, not {_shown(v)}", field=f"minimum_charge.{k}")
            minimum[k] = seconds
        kw["minimum_charge_s"] = minimum
    if "rate_classes" in values:
        kw.update(_rate_classes(values["rate_classes"]))
    if "basis" in values:
        if values["basis"] not in BASES:
            raise InvalidInput(f"basis must be one of {', '.join(BASES)} (max: OpenCost's max(request, usage)), "
                               f"not {_shown(values['basis'])}", field="basis")
        kw["basis"] = values["basis"]
    if ("spotLabel" in values) != ("spotLabelValue" in values):
        raise InvalidInput("spotLabel and spotLabelValue go together (the node label that marks spot nodes)",
                           field="spotLabel")
    if "spotLabel" in values:
        label, label_value = values["spotLabel"], values["spotLabelValue"]
        if not isinstance(label, str) or not label or not isinstance(label_value, str):
            raise InvalidInput("spotLabel and spotLabelValue must be strings", field="spotLabel")
        kw["spot_label"] = (label, label_value)
    return _replace(base, kw)


def _rate_classes(value: Any) -> dict[str, Any]:
    classes = _mapping(value, "rate_classes", RATE_CLASSES)
    out: dict[str, Any] = {}
    if classes.get("on-demand") not in (None, {}):
        raise InvalidInput("rate_classes.on-demand takes no settings: on-demand is the sheet's own prices",
                           field="rate_classes.on-demand")
    if "reserved" in classes:
        reserved = _mapping(classes["reserved"], "rate_classes.reserved", ("discount", "baseline"))
        if "discount" in reserved:
            out["reserved_discount"] = _number(reserved["discount"], "rate_classes.reserved.discount", high=1.0,
                                               open_high=True, what="a discount (0.3 is 30% off)")
        if "baseline" in reserved:
            b = _mapping(reserved["baseline"], "rate_classes.reserved.baseline",
                         ("cpu_cores", "memory_gb", "gpus", "gpu_model"))
            key = "rate_classes.reserved.baseline"
            gpus = _number(b.get("gpus", 0), f"{key}.gpus", high=100_000, what="a number of GPUs")
            if gpus != int(gpus):
                raise InvalidInput(f"{key}.gpus must be a whole number of GPUs, not {_shown(b['gpus'])}", field=f"{key}.gpus")
            model = b.get("gpu_model")
            if model is not None and not isinstance(model, str):
                raise InvalidInput(f"{key}.gpu_model must be a GPU model name", field=f"{key}.gpu_model")
            out["reserved_baseline"] = Baseline(
                _number(b.get("cpu_cores", 0), f"{key}.cpu_cores", high=1_000_000, what="a number of cores"),
                _number(b.get("memory_gb", 0), f"{key}.memory_gb", high=100_000_000, what="a number of GB"),
                int(gpus), model)
    if "spot" in classes:
        spot = _mapping(classes["spot"], "rate_classes.spot", ("discount",))
        if "discount" in spot:
            out["spot_discount"] = _number(spot["discount"], "rate_classes.spot.discount", high=1.0, open_high=True,
                                           what="a discount (0.7 is 70% off)")
    return out


def _replace(sheet: PriceSheet, kw: Mapping[str, Any]) -> PriceSheet:
    from dataclasses import replace

    return replace(sheet, **kw)


def load_price_sheet(path: str | Path) -> PriceSheet:
    """The sheet in a YAML or JSON file (by its suffix; YAML reads JSON too); errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"cannot read the price sheet {path}: {e.strerror}", field="prices") from None
    except UnicodeDecodeError as e:
        raise InvalidInput(f"the price sheet {path} is not UTF-8 text (byte {e.start})", field="prices") from None
    return parse_price_sheet(read_document(text, path))


def read_document(text: str, path: Path) -> Any:
    """A YAML or JSON document's content; InvalidInput naming the file on a syntax error."""
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{path} is not valid JSON: {e}", field=str(path)) from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidInput(f"{path} is not valid YAML: {_one_line(e)}", field=str(path)) from None


def _one_line(e: Exception) -> str:
    """A YAML syntax error as one line ("while parsing a flow sequence, expected ',' or ']' at line 2,
    column 1"): PyYAML's own text spans several lines with a copy of the source, and a service that
    refuses to start says why in one line."""
    problem = getattr(e, "problem", None)
    if not problem:
        return " ".join(str(e).split())[:300]
    context, mark = getattr(e, "context", None), getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{context + ', ' if context else ''}{problem}{where}"


#: The built-in sheet: an EXAMPLE in the shape of a cloud's list prices (OpenCost's own defaults for
#: CPU, RAM and GPU; Lambda's per-request and GB-second list prices), not a statement of real costs.
#: Admins set STRATOLAB_USAGE_PRICES_FILE to their own.
DEFAULT_SHEET = PriceSheet(
    currency="USD",
    cpu_core_hour=0.031611,
    memory_gb_hour=0.004237,
    gpu_hour=GpuPrices(0.95),
    per_million_requests=0.20,
    function_gb_second=0.0000166667,
    provisioned_gb_second=0.0000041667,
    granularity_ms={"servers": 1000, "runs": 1000, "functions": 1},
    minimum_charge_s={"servers": 60.0, "runs": 0.0, "functions": 0.0},
    reserved_discount=0.4,
    reserved_baseline=Baseline(),
    spot_discount=0.7,
    basis="request",
)
