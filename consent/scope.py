"""What a consent may cover in this deployment: its terms checked, its scope resolved to
categories and nodes, and the scope left when an enterprise narrows it."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from fedcredit.common import uscc
from fedcredit.common.departments import BY_CATEGORY, CATEGORIES
from fedcredit.consent import errors as E
from fedcredit.consent.policy import PurposeCap, check_request
from fedcredit.consent.terms import ConsentTerms
from fedcredit.consent.token import SCORE_ONLY


class TermsChecker:
    """The deployment's fair-use caps, banks and nodes, against which terms are checked.

    ``banks``: the deployment's bank org ids (None: any org id is accepted as a bank);
    ``node_categories``: node org id -> category.
    """

    def __init__(
        self,
        caps: Mapping[str, PurposeCap],
        banks: Collection[str] | None,
        node_categories: Mapping[str, str],
    ) -> None:
        self.caps = caps
        self.banks = frozenset(banks) if banks is not None else None
        self.node_categories = dict(node_categories)
        self.category_nodes: dict[str, list[str]] = {}
        for org, cat in self.node_categories.items():
            self.category_nodes.setdefault(cat, []).append(org)

    def check(self, t: ConsentTerms) -> tuple[list[str], list[str]]:
        """Refuse terms this deployment cannot grant; their scope and nodes, resolved."""
        uscc.validate(t.enterprise)
        if self.banks is not None and t.bank not in self.banks:
            raise E.InvalidBank(
                f"{t.bank!r} is not a bank of this deployment; known: {', '.join(sorted(self.banks))}"
            )
        if not t.bank:
            raise E.InvalidBank("the bank is empty")
        check_request(
            self.caps,
            purpose=t.purpose,
            validity_days=t.validity_days,
            max_uses=t.max_uses,
            retention_days=t.retention_days,
            loan_term_days=t.loan_term_days,
        )
        return self.resolve(t.scope, t.nodes)

    def resolve(self, scope: Sequence[str], nodes: Sequence[str]) -> tuple[list[str], list[str]]:
        """The scope (sorted categories, or ``[score_only]``) and the nodes it covers: those
        given, which must serve the scope, else every node serving it."""
        scope = list(dict.fromkeys(scope))
        cats = self._categories(scope)
        if nodes:
            nodes = list(dict.fromkeys(nodes))
            unknown = [n for n in nodes if n not in self.node_categories]
            if unknown:
                raise E.InvalidNodes(
                    f"unknown nodes {unknown}; known: {', '.join(sorted(self.node_categories))}"
                )
            outside = [n for n in nodes if self.node_categories[n] not in cats]
            if outside:
                raise E.InvalidNodes(
                    f"nodes {outside} serve categories outside the scope {scope}; drop them or widen the scope"
                )
        else:
            nodes = [n for c in cats for n in self.category_nodes.get(c, [])]
            if not nodes:
                raise E.InvalidNodes(f"no node in this deployment serves {cats}")
        return (scope if scope == [SCORE_ONLY] else cats), sorted(nodes)

    def _categories(self, scope: list[str]) -> list[str]:
        """The categories a (deduplicated) scope stands for: every one for ``score_only``."""
        if not scope:
            raise E.InvalidScope(
                f"scope is empty; give categories ({', '.join(CATEGORIES)}) or '{SCORE_ONLY}'"
            )
        if SCORE_ONLY in scope:
            if scope != [SCORE_ONLY]:
                raise E.InvalidScope(f"'{SCORE_ONLY}' stands alone; got {scope}")
            return sorted(self.category_nodes)
        unknown = [c for c in scope if c not in BY_CATEGORY]
        if unknown:
            raise E.InvalidScope(
                f"unknown categories {unknown}; expected some of {', '.join(CATEGORIES)} or '{SCORE_ONLY}'"
            )
        return sorted(scope)

    def narrowed(
        self,
        consent_id: str,
        scope: Sequence[str],
        nodes: Sequence[str],
        remove_categories: Sequence[str],
        remove_nodes: Sequence[str],
    ) -> tuple[list[str], list[str]]:
        """The scope and nodes left once ``remove_categories`` and ``remove_nodes`` are taken
        back from a consent covering ``scope`` and ``nodes``; each must be covered, and
        something must be left."""
        score_only = list(scope) == [SCORE_ONLY]
        missing = [c for c in remove_categories if c not in scope and not score_only]
        missing += [n for n in remove_nodes if n not in nodes]
        if missing:
            raise E.NarrowingInvalid(
                f"{missing} are not covered by consent {consent_id}; nothing to remove"
            )
        drop_nodes = set(remove_nodes)
        for c in remove_categories:
            drop_nodes.update(self.category_nodes.get(c, []))
        kept = [n for n in nodes if n not in drop_nodes]
        if score_only:
            left = [SCORE_ONLY]
        else:
            kept_cats = {self.node_categories[n] for n in kept}
            left = [c for c in scope if c not in remove_categories and c in kept_cats]
        if not kept or not left:
            raise E.NarrowingInvalid(
                f"removing {list(remove_categories) + list(remove_nodes)} leaves nothing; revoke the consent instead"
            )
        return left, kept
