"""A deployment described by one TOML file.

Layout (``fedcredit init`` writes a complete one)::

    [deployment]
    name = "weihai-local"
    pki = "pki"                      # folder with ca.pem and orgs/<id>.pem|key

    [[organisations]]                # everyone who holds a certificate
    id = "dept-tax"
    role = "department"

    [services.consent]               # also: ledger, coordinator
    org = "consent-service"
    address = "127.0.0.1:47101"
    database = "sqlite:///data/consent.sqlite"

    [[nodes]]                        # one per department
    department = "tax"
    org = "dept-tax"
    address = "127.0.0.1:47110"
    database = "sqlite:///data/node-tax.sqlite"

    [banks]
    orgs = ["bank-icbc-weihai", ...]

    [consent]   [ledger]   [node]   [coordinator]   [fund]   [training]
    # each service's own settings; the service documents and parses its table

Relative paths (PKI folder, SQLite files, certificate paths) are resolved
against the folder that holds the file. Every error names the key and what
was expected.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy.engine import make_url

from fedcredit.common.departments import BY_ID, ROLES
from fedcredit.common.errors import ConfigError, NotFound
from fedcredit.common.tls import TlsFiles

SERVICE_NAMES = ("consent", "ledger", "coordinator", "policies", "market")
SETTINGS_SECTIONS = (
    "consent", "ledger", "node", "coordinator", "fund", "training", "demo", "portal",
    "policies",
)  # fmt: skip
# An organisation id as it names a certificate file in the PKI folder.
_ORG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TOP_LEVEL = {"deployment", "organisations", "services", "nodes", "banks", *SETTINGS_SECTIONS}

_MISSING = object()


class UnknownOrganisation(NotFound):
    reason = "UNKNOWN_ORGANISATION"


@dataclass(frozen=True)
class Section:
    """One settings table, with typed getters whose errors name ``section.key``."""

    name: str
    values: Mapping[str, Any]
    source: str = "<config>"

    def _get(self, key: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        value = self.values.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise ConfigError(f"{self.source}: [{self.name}] {key} is required ({what})")
            return default
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"{self.source}: [{self.name}] {key} must be {what}, got {value!r}")
        if not isinstance(value, types):
            raise ConfigError(f"{self.source}: [{self.name}] {key} must be {what}, got {value!r}")
        return value

    def get_int(
        self, key: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None
    ) -> int:
        v = self._get(key, default, (int,), "an integer")
        if v is not None and ((min is not None and v < min) or (max is not None and v > max)):
            raise ConfigError(
                f"{self.source}: [{self.name}] {key} must be between {min} and {max}, got {v}"
            )
        return cast(int, v if v is None else int(v))

    def get_float(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        min: float | None = None,
        max: float | None = None,
    ) -> float:
        v = self._get(key, default, (int, float), "a number")
        if v is not None and ((min is not None and v < min) or (max is not None and v > max)):
            raise ConfigError(
                f"{self.source}: [{self.name}] {key} must be between {min} and {max}, got {v}"
            )
        return cast(float, v if v is None else float(v))

    def get_str(
        self, key: str, default: Any = _MISSING, *, choices: tuple[str, ...] | None = None
    ) -> str:
        v = self._get(key, default, (str,), "a string")
        if choices is not None and v not in choices:
            raise ConfigError(
                f"{self.source}: [{self.name}] {key} must be one of {', '.join(choices)}, got {v!r}"
            )
        return v  # type: ignore[no-any-return]

    def get_bool(self, key: str, default: Any = _MISSING) -> bool:
        return self._get(key, default, (bool,), "true or false")  # type: ignore[no-any-return]

    def get_list(self, key: str, default: Any = _MISSING) -> list[Any]:
        return list(self._get(key, default, (list,), "a list"))

    def get_table(self, key: str) -> Section:
        v = self._get(key, {}, (dict,), "a table")
        return Section(f"{self.name}.{key}", v, self.source)

    def check_keys(self, allowed: set[str] | frozenset[str]) -> None:
        """Refuse keys a service does not know (a typo must not be silently ignored)."""
        unknown = sorted(set(self.values) - set(allowed))
        if unknown:
            raise ConfigError(
                f"{self.source}: [{self.name}] has unknown key(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(sorted(allowed))}"
            )


@dataclass(frozen=True)
class Organisation:
    id: str
    role: str
    tls: TlsFiles


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    org_id: str
    address: str
    database: str
    # Where the service serves Prometheus /metrics (loopback HTTP); empty: not served.
    metrics: str = ""


@dataclass(frozen=True)
class NodeConfig:
    department: str
    org_id: str
    address: str
    database: str
    # Where the node's witness also answers the C2SP tlog-witness HTTP protocol
    # (POST /add-checkpoint, no client certificate); empty: gRPC only.
    witness_http: str = ""
    metrics: str = ""  # Prometheus /metrics (loopback HTTP); empty: not served


@dataclass
class Deployment:
    path: Path
    name: str
    pki_dir: Path
    organisations: dict[str, Organisation]
    services: dict[str, ServiceConfig]
    nodes: list[NodeConfig]
    banks: list[str]
    raw: dict[str, Any] = field(repr=False)

    @property
    def dir(self) -> Path:
        return self.path.parent

    def section(self, name: str) -> Section:
        if name not in SETTINGS_SECTIONS:
            raise ConfigError(
                f"no settings section [{name}]; known: {', '.join(SETTINGS_SECTIONS)}"
            )
        return Section(name, self.raw.get(name, {}), str(self.path))

    def org(self, org_id: str) -> Organisation:
        """An organisation of the deployment.

        Enterprises are too many to list in the file: one whose certificate was
        issued into the PKI folder (``fedcredit pki issue --role enterprise``)
        is found there, with the role its certificate states.
        """
        if org_id in self.organisations:
            return self.organisations[org_id]
        if not _ORG_ID.fullmatch(org_id):  # never a path out of the PKI folder, nor 100k long
            raise UnknownOrganisation(
                f"{self.path}: expected an organisation id (letters, digits, '.', '_', '-'; at "
                f"most 64), got {org_id[:40]!r}{'...' if len(org_id) > 40 else ''}"
            )
        files = TlsFiles(
            ca=self.pki_dir / "ca.pem",
            cert=self.pki_dir / "orgs" / f"{org_id}.pem",
            key=self.pki_dir / "orgs" / f"{org_id}.key",
        )
        if files.cert.exists() and files.key.exists():
            return Organisation(org_id, files.identity().role, files)
        raise UnknownOrganisation(
            f"{self.path}: organisation {org_id!r} is not in [[organisations]] and has no "
            f"certificate in {self.pki_dir / 'orgs'}; issue one with `fedcredit pki issue`"
        )

    def tls(self, org_id: str) -> TlsFiles:
        return self.org(org_id).tls

    def service(self, name: str) -> ServiceConfig:
        try:
            return self.services[name]
        except KeyError:
            raise ConfigError(f"{self.path}: [services.{name}] is missing") from None

    def node(self, department: str) -> NodeConfig:
        for n in self.nodes:
            if n.department == department:
                return n
        raise ConfigError(
            f"{self.path}: no [[nodes]] entry for department {department!r}; "
            f"configured: {', '.join(n.department for n in self.nodes) or 'none'}"
        )


def resolve_database(url: str, base: Path, where: str) -> str:
    """A database URL of a deployment file: a relative SQLite path is under ``base`` (the
    deployment's directory); a URL that does not parse is CONFIG_INVALID naming ``where``."""
    return _resolve_db(url, base, where)


def _resolve_db(url: str, base: Path, where: str) -> str:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"{where}: database URL {url!r} is not valid: {exc}") from exc
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        p = Path(parsed.database)  # type: ignore[arg-type]
        if not p.is_absolute():
            return f"sqlite:///{(base / p).resolve()}"
    return url


def _req(table: Mapping[str, Any], key: str, where: str, typ: type = str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: {key} is required")
    v = table[key]
    if not isinstance(v, typ):
        raise ConfigError(f"{where}: {key} must be a {typ.__name__}, got {v!r}")
    return v


def _check_address(addr: str, where: str) -> str:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: address must be HOST:PORT, got {addr!r}")
    return addr


def _parse_organisations(
    data: Mapping[str, Any], src: str, base: Path, pki_dir: Path
) -> dict[str, Organisation]:
    orgs: dict[str, Organisation] = {}
    raw_orgs = data.get("organisations", [])
    if not isinstance(raw_orgs, list):
        raise ConfigError(f"{src}: organisations must be an array of tables ([[organisations]])")
    for i, o in enumerate(raw_orgs):
        where = f"{src}: [[organisations]] #{i + 1}"
        oid = _req(o, "id", where)
        role = _req(o, "role", where)
        if role not in ROLES:
            raise ConfigError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if oid in orgs:
            raise ConfigError(f"{where}: organisation id {oid!r} appears twice")
        cert = base / o["cert"] if "cert" in o else pki_dir / "orgs" / f"{oid}.pem"
        key = base / o["key"] if "key" in o else pki_dir / "orgs" / f"{oid}.key"
        ca = base / o["ca"] if "ca" in o else pki_dir / "ca.pem"
        orgs[oid] = Organisation(oid, role, TlsFiles(ca=ca, cert=cert, key=key))
    return orgs


def _parse_services(
    data: Mapping[str, Any], src: str, base: Path, orgs: Mapping[str, Organisation]
) -> dict[str, ServiceConfig]:
    services: dict[str, ServiceConfig] = {}
    raw_services = data.get("services", {})
    for sname, s in raw_services.items():
        where = f"{src}: [services.{sname}]"
        if sname not in SERVICE_NAMES:
            raise ConfigError(
                f"{where}: unknown service; expected one of {', '.join(SERVICE_NAMES)}"
            )
        org = _req(s, "org", where)
        if org not in orgs:
            raise ConfigError(f"{where}: org {org!r} is not declared in [[organisations]]")
        services[sname] = ServiceConfig(
            sname,
            org,
            _check_address(_req(s, "address", where), where),
            _resolve_db(_req(s, "database", where), base, where),
            _optional_address(s, "metrics", where),
        )
    return services


def _parse_nodes(
    data: Mapping[str, Any], src: str, base: Path, orgs: Mapping[str, Organisation]
) -> list[NodeConfig]:
    nodes: list[NodeConfig] = []
    for i, n in enumerate(data.get("nodes", [])):
        where = f"{src}: [[nodes]] #{i + 1}"
        dept = _req(n, "department", where)
        if dept not in BY_ID:
            raise ConfigError(
                f"{where}: department must be one of {', '.join(BY_ID)}, got {dept!r}"
            )
        org = _req(n, "org", where)
        if org not in orgs:
            raise ConfigError(f"{where}: org {org!r} is not declared in [[organisations]]")
        if orgs[org].role != "department":
            raise ConfigError(
                f"{where}: org {org!r} has role {orgs[org].role!r}; a node needs role 'department'"
            )
        nodes.append(
            NodeConfig(
                dept,
                org,
                _check_address(_req(n, "address", where), where),
                _resolve_db(_req(n, "database", where), base, where),
                _witness_http(n, where),
                _optional_address(n, "metrics", where),
            )
        )
    seen = [n.department for n in nodes]
    dup = {d for d in seen if seen.count(d) > 1}
    if dup:
        raise ConfigError(
            f"{src}: department(s) {', '.join(sorted(dup))} have more than one [[nodes]] entry"
        )
    return nodes


def _parse_banks(data: Mapping[str, Any], src: str, orgs: Mapping[str, Organisation]) -> list[str]:
    banks_tab = data.get("banks", {})
    banks = list(banks_tab.get("orgs", [])) if isinstance(banks_tab, dict) else []
    for b in banks:
        if b not in orgs or orgs[b].role != "bank":
            raise ConfigError(
                f"{src}: [banks] orgs lists {b!r}, which is not an organisation with role 'bank'"
            )
    return banks


def parse_config(data: Mapping[str, Any], path: Path) -> Deployment:
    src = str(path)
    base = path.parent
    unknown = sorted(set(data) - TOP_LEVEL)
    if unknown:
        raise ConfigError(
            f"{src}: unknown top-level table(s) {', '.join(unknown)}; expected some of {', '.join(sorted(TOP_LEVEL))}"
        )
    dep = data.get("deployment")
    if not isinstance(dep, dict):
        raise ConfigError(f"{src}: [deployment] table is required")
    name = _req(dep, "name", f"{src}: [deployment]")
    pki_dir = (base / _req(dep, "pki", f"{src}: [deployment]")).resolve()
    orgs = _parse_organisations(data, src, base, pki_dir)
    services = _parse_services(data, src, base, orgs)
    nodes = _parse_nodes(data, src, base, orgs)
    banks = _parse_banks(data, src, orgs)
    return Deployment(path, name, pki_dir, orgs, services, nodes, banks, dict(data))


def _witness_http(n: Mapping[str, Any], where: str) -> str:
    value = n.get("witness_http", "")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: witness_http must be an address string, got {value!r}")
    return _check_address(value, where) if value else ""


def _optional_address(n: Mapping[str, Any], key: str, where: str) -> str:
    value = n.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be an address string, got {value!r}")
    return _check_address(value, where) if value else ""


def load_config(path: str | Path) -> Deployment:
    p = Path(path).resolve()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {p} does not exist; create one with `fedcredit init --dir DIR`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: expected a UTF-8 TOML file, got a byte that is not UTF-8 at offset {exc.start}"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    return parse_config(data, p)
