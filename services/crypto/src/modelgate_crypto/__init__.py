"""modelgate crypto service: Fernet encryption bound to the caller's user id (``uid``).

What an admin may do: nothing special. An admin token decrypts only what that same admin
encrypted, like any other user. Owner keys are derived from the keyring and the token's
user id; an "admin may decrypt anything" path would turn one stolen
admin token into every user's plaintext, and would need the service to decrypt under a key
chosen by the request rather than by the verified token. Administrators manage the keys
(`modelgate keys rotate-fernet|retire-fernet`), not the data. Anyone who can read
`secrets/fernet_keyring.json` can derive every owner's key: that file is the trust boundary.
"""
