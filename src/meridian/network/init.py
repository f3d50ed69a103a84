"""``meridian network init``: generate a network directory with its identities.

Two profiles:

- ``default``: N organisations (``org1``..), all operators, each with a CA, an
  ``admin`` and a ``user1`` (client) identity; the nodes, assigned to orgs round robin
  (node i serves its gateway on ``base_port + 2i`` and its peer-to-peer link on the
  port after); the genesis ``network.json`` with one app whose members are all
  orgs, and the plans of :data:`DEFAULT_PLANS`.

In both, each node gets, besides its own identity, a *registrar* identity
(``nodes/<node>/registrar``): an admin of the node's operator org that its gateway
uses to propose the registration of developers and enterprises (``POST
/v1/developers``).
- ``pilot``: the service network of the source articles at a size one machine runs
  (see :data:`PILOT_ZONES` and :data:`PILOT_ORGS`): four zones, one operator per zone
  running one node there (``node1``..``node4``, ports as above), a central bank, three
  commercial banks, a regulator, twelve enterprises and eight developers. Every org
  gets a CA, an ``admin`` and a ``user1`` identity and real-name details; only
  operators run nodes. Plans are :data:`DEFAULT_PLANS`, policies the defaults, and
  there are no apps: developers create them later through governance. ``orgs``,
  ``nodes`` and ``app`` of :class:`InitOptions` do not apply to it; ``network``,
  ``host``, ``base_port`` and ``block`` do.

An unknown profile is ``InvalidInput(code="bad_config")``, like every other bad option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..crypto.certs import CertificateAuthority, Role
from ..errors import Conflict, InvalidInput
from .config import (
    AppConfig,
    BlockConfig,
    NetworkConfig,
    NetworkLayout,
    NodeEntry,
    OrgConfig,
    Zone,
    write_file,
)
from .plans import DEFAULT_PLANS

MAX_INIT_ORGS = 64
MAX_INIT_NODES = 64


class InitProfile(StrEnum):
    """What ``network init`` generates."""

    DEFAULT = "default"
    PILOT = "pilot"


PROFILES: tuple[str, ...] = tuple(p.value for p in InitProfile)


@dataclass(frozen=True, slots=True)
class InitOptions:
    network: str = "meridian"
    orgs: int = 2
    nodes: int = 1
    app: str = "demo"
    host: str = "127.0.0.1"
    base_port: int = 7050
    block: BlockConfig = field(default_factory=BlockConfig)
    profile: str = InitProfile.DEFAULT.value


@dataclass(frozen=True, slots=True)
class PilotOrg:
    """One org of the pilot network. ``zone`` is where it is registered (and, for an
    operator, where its node runs); ``sector`` says what an enterprise or developer does.
    Registration numbers and contacts are invented (``.example`` mail domains)."""

    id: str
    type: str
    name: str
    legal_name: str
    registration_no: str
    zone: str
    sector: str = ""

    @property
    def details(self) -> tuple[tuple[str, str], ...]:
        details = {
            "legal_name": self.legal_name,
            "registration_no": self.registration_no,
            "contact": f"contact@{self.id}.example",
            "zone": self.zone,
        }
        if self.sector:
            details["sector"] = self.sector
        return tuple(sorted(details.items()))


PILOT_ZONES: tuple[Zone, ...] = (
    Zone("beijing", "Beijing", "city"),
    Zone("shanghai", "Shanghai", "city"),
    Zone("shenzhen", "Shenzhen", "city"),
    Zone("hongkong", "Hong Kong SAR", "region"),
)

_O, _CB, _B, _R, _E, _D = "operator", "central_bank", "bank", "regulator", "enterprise", "developer"

PILOT_ORGS: tuple[PilotOrg, ...] = (
    # operators: one per zone, in zone order (node i runs in zone i)
    PilotOrg("ops-beijing", _O, "Capital Node Services",
             "Beijing Capital Node Services Co., Ltd.", "91110108MA01PN0012", "beijing"),
    PilotOrg("ops-shanghai", _O, "Huangpu Cloud Nodes",
             "Shanghai Huangpu Cloud Nodes Co., Ltd.", "91310115MA1HPN0027", "shanghai"),
    PilotOrg("ops-shenzhen", _O, "Pearl Delta Data Centres",
             "Shenzhen Pearl Delta Data Centre Co., Ltd.", "91440300MA5PDN0035", "shenzhen"),
    PilotOrg("ops-hongkong", _O, "Victoria Harbour Ledger Hosting",
             "Victoria Harbour Ledger Hosting Limited", "BR 71530042", "hongkong"),
    # the two-tier digital currency: the central bank issues to commercial banks
    PilotOrg("central-bank", _CB, "Central Bank Digital Currency Institute",
             "Digital Currency Institute of the Central Bank", "11100000MB0CB00011", "beijing"),
    PilotOrg("jinhai-bank", _B, "Jinhai Bank",
             "Jinhai Commercial Bank Co., Ltd.", "91110000MA00JH0018", "beijing"),
    PilotOrg("pujiang-bank", _B, "Pujiang Merchants Bank",
             "Pujiang Merchants Bank Co., Ltd.", "91310000MA1PJ00021", "shanghai"),
    PilotOrg("nanling-bank", _B, "Nanling Bank",
             "Nanling Commercial Bank Co., Ltd.", "91440300MA5NL00034", "shenzhen"),
    PilotOrg("regulator", _R, "Digital Finance Supervision Office",
             "Digital Finance Supervision Office of the Pilot Zones", "11100000MB0RG00046",
             "beijing"),
    # enterprises: the industry applications' users
    PilotOrg("greenleaf-tea", _E, "Greenleaf Tea", "Shanghai Greenleaf Tea Co., Ltd.",
             "91310112MA1GL00053", "shanghai", "agricultural traceability"),
    PilotOrg("harbour-logistics", _E, "Harbour Logistics",
             "Shenzhen Harbour Logistics Co., Ltd.", "91440300MA5HL00068", "shenzhen",
             "logistics and customs"),
    PilotOrg("kowloon-trading", _E, "Kowloon Trading", "Kowloon Trading Company Limited",
             "BR 68220417", "hongkong", "cross-border trade"),
    PilotOrg("jingcheng-evidence", _E, "Jingcheng Evidence Preservation",
             "Beijing Jingcheng Evidence Preservation Co., Ltd.", "91110105MA01JC0071",
             "beijing", "electronic evidence"),
    PilotOrg("xinghe-hospital", _E, "Xinghe Hospital", "Shanghai Xinghe General Hospital",
             "12310000MB2XH00084", "shanghai", "health data"),
    PilotOrg("anping-insurance", _E, "Anping Insurance", "Anping Property Insurance Co., Ltd.",
             "91110000MA00AP0097", "beijing", "insurance risk control"),
    PilotOrg("baicao-pharma", _E, "Baicao Pharmaceuticals",
             "Shenzhen Baicao Pharmaceutical Co., Ltd.", "91440300MA5BC00102", "shenzhen",
             "drug traceability"),
    PilotOrg("yuntu-museum", _E, "Yuntu Digital Museum", "Beijing Yuntu Digital Museum",
             "12110000MB0YT00115", "beijing", "digital certificates"),
    PilotOrg("qianhai-supply", _E, "Qianhai Supply Chain",
             "Shenzhen Qianhai Supply Chain Management Co., Ltd.", "91440300MA5QH00128",
             "shenzhen", "supply-chain finance"),
    PilotOrg("lujiazui-leasing", _E, "Lujiazui Leasing",
             "Shanghai Lujiazui Equipment Leasing Co., Ltd.", "91310115MA1LJ00131", "shanghai",
             "equipment leasing"),
    PilotOrg("sunrise-solar", _E, "Sunrise Solar", "Shenzhen Sunrise Solar Energy Co., Ltd.",
             "91440300MA5SS00144", "shenzhen", "green energy certificates"),
    PilotOrg("victoria-foods", _E, "Victoria Foods", "Victoria Foods Import Limited",
             "BR 70315589", "hongkong", "food import traceability"),
    # developers: small businesses, individuals, students and public bodies
    PilotOrg("bytebridge-studio", _D, "ByteBridge Studio",
             "Shanghai ByteBridge Software Studio", "91310104MA1BB00157", "shanghai",
             "software studio"),
    PilotOrg("capital-univ-lab", _D, "Capital University Blockchain Lab",
             "Capital University of Technology", "12110000MB0CU00160", "beijing",
             "university lab"),
    PilotOrg("li-wei", _D, "Li Wei", "Li Wei (sole proprietor)", "92440300MA5LW00173",
             "shenzhen", "individual developer"),
    PilotOrg("pixelforge", _D, "PixelForge", "Shenzhen PixelForge Technology Co., Ltd.",
             "91440300MA5PF00186", "shenzhen", "small business"),
    PilotOrg("harbourcode", _D, "HarbourCode", "HarbourCode Limited", "BR 72041163",
             "hongkong", "small business"),
    PilotOrg("futian-data-centre", _D, "Futian Data Service Centre",
             "Futian District Data Service Centre", "12440304MB2FT00199", "shenzhen",
             "public body"),
    PilotOrg("campus-chain-club", _D, "Campus Chain Club",
             "Pudong University Campus Chain Student Club", "51310000MJ4CC00202", "shanghai",
             "student club"),
    PilotOrg("openroad-apps", _D, "OpenRoad Apps", "Beijing OpenRoad Apps Co., Ltd.",
             "91110108MA01OR0215", "beijing", "small business"),
)  # fmt: skip


def validate_init_options(options: InitOptions) -> None:
    """InvalidInput(code="bad_config") unless ``options`` can make a network."""
    if options.profile not in PROFILES:
        raise InvalidInput(
            f"unknown network profile {options.profile!r}",
            code="bad_config",
            hint=f"profiles: {', '.join(PROFILES)}",
        )
    if not 1 <= options.orgs <= MAX_INIT_ORGS or not 1 <= options.nodes <= MAX_INIT_NODES:
        raise InvalidInput(
            f"orgs must be in 1..{MAX_INIT_ORGS} and nodes in 1..{MAX_INIT_NODES}",
            code="bad_config",
        )


def init_network(root: Path, options: InitOptions) -> NetworkConfig:
    """Write a new network directory at ``root`` (which must be empty or absent)."""
    validate_init_options(options)
    if root.exists() and any(root.iterdir()):
        raise Conflict(
            f"{root} is not empty",
            code="already_exists",
            hint="choose a new directory or remove this one",
        )
    layout = NetworkLayout(root)
    if options.profile == InitProfile.PILOT:
        config = _init_pilot(layout, options)
    else:
        config = _init_default(layout, options)
    config.validate()
    layout.save(config)
    return config


def _init_default(layout: NetworkLayout, options: InitOptions) -> NetworkConfig:
    org_ids = [f"org{i}" for i in range(1, options.orgs + 1)]
    cas = {org: _init_org(layout, org) for org in org_ids}
    nodes = [
        _init_node(layout, cas[org_ids[i % len(org_ids)]], i, options) for i in range(options.nodes)
    ]
    return NetworkConfig(
        network=options.network,
        orgs=tuple(OrgConfig(org, ca.cert_pem) for org, ca in cas.items()),
        nodes=tuple(nodes),
        apps=(AppConfig(options.app, tuple(org_ids)),),
        block=options.block,
        plans=DEFAULT_PLANS,
    )


def _init_pilot(layout: NetworkLayout, options: InitOptions) -> NetworkConfig:
    cas = {org.id: _init_org(layout, org.id) for org in PILOT_ORGS}
    operators = [org for org in PILOT_ORGS if org.type == "operator"]
    nodes = [
        _init_node(layout, cas[org.id], i, options, zone=org.zone)
        for i, org in enumerate(operators)
    ]
    return NetworkConfig(
        network=options.network,
        orgs=tuple(
            OrgConfig(org.id, cas[org.id].cert_pem, org.type, org.name, org.details)
            for org in PILOT_ORGS
        ),
        nodes=tuple(nodes),
        apps=(),
        block=options.block,
        zones=PILOT_ZONES,
        plans=DEFAULT_PLANS,
    )


def _init_org(layout: NetworkLayout, org: str) -> CertificateAuthority:
    ca = CertificateAuthority.create(org)
    write_file(layout.ca_dir(org) / "ca.pem", ca.cert_pem)
    write_file(layout.ca_dir(org) / "ca.key", ca.key_pem, secret=True)
    for name, role, attrs in (
        ("admin", Role.ADMIN, {}),
        ("user1", Role.CLIENT, {"department": "operations"}),
    ):
        issued = ca.issue(name, role, attrs=attrs)
        _write_identity(layout.user_dir(org, name), issued.cert_pem, issued.key_pem)
    return ca


def _init_node(
    layout: NetworkLayout,
    ca: CertificateAuthority,
    index: int,
    options: InitOptions,
    *,
    zone: str = "",
) -> NodeEntry:
    """Node ``node{index + 1}`` of ``ca``'s org: its identity, its data directory and its
    entry (gateway on ``base_port + 2 * index``, peer-to-peer on the port after)."""
    node_id = f"node{index + 1}"
    issued = ca.issue(node_id, Role.NODE)
    _write_identity(layout.node_dir(node_id), issued.cert_pem, issued.key_pem)
    # the operator's portal on this node: proposes registrations of developers and
    # enterprises on the operator's behalf (an admin identity of the operator's org)
    registrar = ca.issue(f"registrar-{node_id}", Role.ADMIN, attrs={"registrar": node_id})
    _write_identity(layout.node_dir(node_id) / "registrar", registrar.cert_pem, registrar.key_pem)
    layout.data_dir(node_id).mkdir(parents=True, exist_ok=True)
    gateway_port = options.base_port + 2 * index
    return NodeEntry(
        node_id, ca.org, options.host, gateway_port, gateway_port + 1, issued.cert_pem, zone
    )


def _write_identity(folder: Path, cert_pem: bytes, key_pem: bytes | None) -> None:
    write_file(folder / "cert.pem", cert_pem)
    if key_pem is not None:
        write_file(folder / "key.pem", key_pem, secret=True)
