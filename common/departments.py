"""The twelve departments, their data categories and organisation ids.

One node per department; one consent-scope category per node. This table is
the single source of truth for department ids, category ids and the default
organisation ids used by `fedcredit init` and the synthetic world.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Department:
    id: str  # short id used on the command line: `--department tax`
    category: str  # consent-scope category this node serves
    name: str  # human name
    org_id: str  # default organisation id of the node in a deployment


DEPARTMENTS: tuple[Department, ...] = (
    Department("market_regulation", "composition", "Market regulation", "dept-market-regulation"),
    Department("tax", "operations_tax", "Tax bureau", "dept-tax"),
    Department(
        "social_security",
        "social_security",
        "Human resources and social security",
        "dept-social-security",
    ),
    Department(
        "medical_insurance", "medical_insurance", "Medical insurance", "dept-medical-insurance"
    ),
    Department("housing_fund", "staff_benefits", "Housing provident fund", "dept-housing-fund"),
    Department("ip", "intellectual_property", "Intellectual property office", "dept-ip"),
    Department("courts", "judicial", "Courts", "dept-courts"),
    Department("public_credit", "public_credit", "Public credit center", "dept-public-credit"),
    Department(
        "utilities", "operations_utilities", "Utilities (electricity and water)", "dept-utilities"
    ),
    Department("customs", "trade", "Customs", "dept-customs"),
    Department("natural_resources", "assets", "Natural resources", "dept-natural-resources"),
    Department(
        "shareholders", "shareholder_credit", "Shareholder credit registry", "dept-shareholders"
    ),
)

BY_ID: dict[str, Department] = {d.id: d for d in DEPARTMENTS}
BY_CATEGORY: dict[str, Department] = {d.category: d for d in DEPARTMENTS}
BY_ORG: dict[str, Department] = {d.org_id: d for d in DEPARTMENTS}
CATEGORIES: tuple[str, ...] = tuple(d.category for d in DEPARTMENTS)

# The case study's seven partner banks (organisation ids used by the demo).
DEFAULT_BANKS: tuple[str, ...] = (
    "bank-icbc-weihai",
    "bank-ccb-weihai",
    "bank-abc-weihai",
    "bank-boc-weihai",
    "bank-bocom-weihai",
    "bank-weihai-city",
    "bank-weihai-rural",
)

# Roles carried in certificates (subject OU) and checked by every service.
ROLES: tuple[str, ...] = (
    "department",
    "bank",
    "enterprise",
    "consent",
    "ledger",
    "coordinator",
    "auditor",
    "operator",
    "market",
    "policy",  # the policy-fund service: screens in the nodes, ledgers its own kinds
    "portal",  # the web portal: relays people's passkey-signed acts, holds no rights of its own
)

# Consent purposes (JWT `authorization_details[].purpose`).
PURPOSES: tuple[str, ...] = (
    "credit_assessment",
    "guarantee",
    "post_loan_monitoring",
    "model_training",
    "marketplace",
    "investment_review",
)
