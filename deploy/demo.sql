-- The demo target: two people who log in, two roles they can borrow, data to look at.
-- Used by `make run` (embedded PostgreSQL) and by docker-compose's demo database.
-- Idempotent: safe to run on every start.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'alice') THEN CREATE ROLE alice LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bob') THEN CREATE ROLE bob LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'analytics_ro') THEN CREATE ROLE analytics_ro NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'support_rw') THEN CREATE ROLE support_rw NOLOGIN; END IF;
END
$$;

CREATE TABLE IF NOT EXISTS public.orders (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer text NOT NULL,
  total numeric(10, 2) NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.tickets (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  subject text NOT NULL,
  status text NOT NULL DEFAULT 'open'
);
INSERT INTO public.orders (customer, total)
  SELECT 'customer ' || g, g * 10 FROM generate_series(1, 5) g
  WHERE NOT EXISTS (SELECT FROM public.orders);
INSERT INTO public.tickets (subject)
  SELECT 'ticket ' || g FROM generate_series(1, 3) g
  WHERE NOT EXISTS (SELECT FROM public.tickets);

-- Privileges without GRANT OPTION, on tables the roles do not own: safe to lend.
GRANT SELECT ON public.orders, public.tickets TO analytics_ro;
GRANT SELECT, INSERT, UPDATE ON public.tickets TO support_rw;
