-- One database per platform store (the department nodes keep their own volumes).
CREATE DATABASE consent OWNER fedcredit;
CREATE DATABASE ledger OWNER fedcredit;
CREATE DATABASE coordinator OWNER fedcredit;
