"""The web portal: enterprises, banks, departments, auditors and the operator work from
pages (issue 19).

What each party learns through the portal:

- the portal itself: what it shows a signed-in person (their consents, the ledger
  entries about their own enterprise) and the statements they sign. It holds no passkey
  and no organisation's certificate: every consent decision is a WebAuthn assertion the
  consent service verifies against the enterprise's registered passkeys, over a
  challenge that commits to the exact terms, so the portal cannot act for anyone.
- the consent service: which passkey signed which statement (the assertion's SHA-256
  goes into the consent event, hence the ledger);
- the browser: the statement it signs, and the inclusion proofs and the signed
  checkpoint it verifies itself (WebCrypto), not the server's word.
"""
