#!/usr/bin/env python3
"""Generate two versions of a sample data-catalog metadata set.

    python3 deploy/examples/generate.py

writes (after deleting them first)

    deploy/examples/catalog-v1/   the catalog as released today
    deploy/examples/catalog-v2/   the next release, derived from v1 in code

Every *.json / *.yaml file is one Switchboard item; its key is the path
relative to the set directory without the extension.  Standard library
only and fully deterministic: running the script twice produces
byte-identical files.  YAML is written by the small emitter below, which
quotes every string value as a JSON-style double-quoted string (always
valid YAML).
"""

import copy
import json
import random
import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_V1 = HERE / "catalog-v1"
OUT_V2 = HERE / "catalog-v2"

LAKE = "s3://acme-lake-prod"
MAIL = "acme.example"

# ---------------------------------------------------------------------------
# Column dictionary: "name type [nn] [pii] | description".  A column name
# means the same thing in every table that uses it.
# ---------------------------------------------------------------------------

COLUMN_SPECS = """
created_at timestamp nn | Time the record was created in the source system
updated_at timestamp | Time the record was last updated in the source system
_ingested_at timestamp nn | Time the record was loaded into the lake
_source_file string nn | Object key of the landed file the record came from
_ingest_date date nn | Load partition date (UTC)
currency string | ISO 4217 currency code
country_code string | ISO 3166-1 alpha-2 country code
is_active boolean nn | Whether the record is currently active
start_date date | First day of the period
end_date date | Last day of the period (inclusive)
opened_at timestamp | Time the record was opened
started_at timestamp | Start time
ended_at timestamp | End time
email string pii | E-mail address
activity_date date nn | Calendar date (UTC)

order_id string nn | Unique order identifier from the order management system
customer_id string nn | Customer identifier
order_status string nn | Order lifecycle status (placed, paid, shipped, delivered, cancelled, returned)
order_date date nn | Date the order was placed (UTC)
subtotal_amount decimal(18,2) | Order amount before discounts and tax
discount_amount decimal(18,2) | Total discount applied to the order
tax_amount decimal(18,2) | Sales tax or VAT charged
total_amount decimal(18,2) nn | Amount charged including tax
sales_channel string | Channel the order came through (web, app, marketplace, retail, b2b)
order_item_id string nn | Unique order line identifier
product_id string nn | Product (SKU) identifier
quantity int32 nn | Number of units
unit_price decimal(18,2) nn | Price per unit at time of order
line_discount decimal(18,2) | Discount applied to the line
line_total decimal(18,2) nn | Line amount after discount
account_id string | B2B account the record belongs to
first_name string pii | Customer first name
last_name string pii | Customer last name
phone string pii | Phone number in E.164 format
segment string | Customer segment (consumer, smb, mid_market, enterprise)
signup_date date | Date the customer first registered
account_name string nn | Legal name of the account
industry string | Industry classification (NAICS sector)
employee_band string | Company size band (1-49, 50-249, 250-999, 1000+)
billing_country string | Billing country code
account_owner_id string | Sales rep who owns the account
annual_revenue decimal(18,2) | Reported annual revenue of the account in USD
opportunity_id string nn | CRM opportunity identifier
stage string nn | Pipeline stage (prospecting, qualification, proposal, negotiation, closed_won, closed_lost)
amount decimal(18,2) | Opportunity amount in USD
close_date date | Expected or actual close date
probability int32 | Win probability percentage for the stage
owner_rep_id string | Sales rep who owns the opportunity
lead_source string | Original lead source
quote_id string nn | Quote identifier
quote_status string | Quote status (draft, sent, accepted, expired)
valid_until date | Date the quote expires
discount_pct decimal(5,2) | Discount percentage offered on the quote
price_list_id string nn | Price list identifier
region string | Sales region (na, emea, apac, latam)
list_price decimal(18,2) nn | List price in the price list currency
effective_from date nn | First day the price is valid
effective_to date | Last day the price is valid (null means open ended)
full_name string pii | Customer full name
lifetime_value decimal(18,2) | Net revenue from the customer since signup
item_count int32 | Number of order lines
gross_amount decimal(18,2) | Order amount before discounts
net_amount decimal(18,2) | Order amount after discounts, excluding tax
weighted_amount decimal(18,2) | Opportunity amount multiplied by stage probability
latest_quote_id string | Most recent quote for the opportunity
days_in_stage int32 | Days the opportunity has been in its current stage
revenue_date date nn | Calendar date of the revenue (UTC)
order_count int64 | Number of orders
gross_revenue decimal(18,2) | Sum of gross order amounts
net_revenue decimal(18,2) | Sum of net order amounts
avg_order_value decimal(18,2) | Net revenue divided by number of orders
booking_month date nn | First day of the booking month
bookings_amount decimal(18,2) | Sum of closed-won opportunity amounts
won_deal_count int64 | Number of closed-won opportunities
fiscal_quarter string nn | Fiscal quarter, e.g. FY2024-Q2
opportunities_closed int64 | Opportunities closed in the quarter
opportunities_won int64 | Opportunities closed-won in the quarter
win_rate decimal(5,4) | Won divided by closed opportunities
promo_code string | Promotion code applied at checkout

invoice_id string nn | Invoice number from the ERP
invoice_date date nn | Invoice issue date
due_date date | Payment due date
invoice_status string | open, paid, partially_paid, void, written_off
amount_due decimal(18,2) | Amount outstanding
payment_id string nn | Payment identifier
payment_date date nn | Date the payment was received or made
payment_method string | card, ach, wire, sepa, check
payment_amount decimal(18,2) nn | Payment amount in payment currency
journal_entry_id string nn | General ledger journal entry identifier
line_number int32 nn | Line number within the journal entry
gl_account_code string nn | Chart-of-accounts code
posting_date date nn | Accounting date the entry was posted
debit_amount decimal(18,2) | Debit amount in transaction currency
credit_amount decimal(18,2) | Credit amount in transaction currency
cost_center_id string | Cost center identifier
memo string | Free-text memo entered by the accountant
bill_id string nn | Vendor bill identifier
vendor_id string nn | Vendor identifier
vendor_name string | Vendor legal name
bill_amount decimal(18,2) | Bill amount
cost_center_name string | Cost center name
department_id string | Owning department
budget_owner_email string pii | E-mail of the budget owner
parent_cost_center_id string | Parent in the cost center hierarchy
rate_date date nn | Date the exchange rate applies to
from_currency string nn | Source currency code
to_currency string nn | Target currency code
fx_rate decimal(18,8) nn | Conversion rate from source to target currency
budget_id string nn | Budget line identifier
fiscal_month date nn | First day of the fiscal month
budget_amount decimal(18,2) | Budgeted amount in USD
amount_usd decimal(18,2) | Amount converted to USD at the posting-date rate
days_past_due int32 | Days since the due date (0 if not yet due)
aging_bucket string | current, 1-30, 31-60, 61-90, 90+
is_paid boolean | Whether the invoice is fully paid
actual_amount decimal(18,2) | Actual amount in USD
variance_amount decimal(18,2) | Actual minus budget in USD
cash_in decimal(18,2) | Cash received
cash_out decimal(18,2) | Cash paid out
net_cash_flow decimal(18,2) | Cash in minus cash out
recognized_revenue decimal(18,2) | Revenue recognized in the period
deferred_revenue decimal(18,2) | Revenue deferred to later periods

campaign_id string nn | Campaign identifier
campaign_name string nn | Campaign name
channel string | Marketing channel (paid_search, paid_social, display, email, affiliate)
budget_usd decimal(18,2) | Planned campaign budget in USD
objective string | awareness, consideration, conversion, retention
spend_date date nn | Date of the spend
ad_platform string | google_ads, meta, linkedin, tiktok
impressions int64 | Ad impressions
spend_usd decimal(18,2) | Spend in USD
click_id string nn | Click identifier (gclid, fbclid or internal)
clicked_at timestamp nn | Time of the click
visitor_id string | First-party cookie identifier
ip_address string pii | Client IP address
utm_source string | UTM source parameter
utm_medium string | UTM medium parameter
email_send_id string nn | Identifier of one e-mail send
recipient_email string pii | Recipient e-mail address
sent_at timestamp nn | Time the e-mail was sent
template_id string | E-mail template
email_event_id string nn | Identifier of the e-mail event
event_type string nn | delivered, open, click, bounce, unsubscribe, spam_report
event_at timestamp nn | Time of the event
session_id string nn | Web session identifier
session_start timestamp nn | Session start time
session_end timestamp | Session end time
landing_page string | First page of the session
referrer string | HTTP referrer
page_views int32 | Pages viewed in the session
device_type string | desktop, mobile, tablet
lead_id string nn | Lead identifier
lead_email string pii | Lead e-mail address
company_name string | Company the lead works for
lead_status string | new, mql, sql, converted, disqualified
converted_at timestamp | Time the lead converted to an opportunity
clicks int64 | Ad clicks
ctr decimal(9,6) | Click-through rate
cpc_usd decimal(18,4) | Cost per click in USD
conversions int64 | Attributed conversions
sends int64 | E-mails sent
opens int64 | Unique opens
unsubscribes int64 | Unsubscribes
open_rate decimal(9,6) | Opens divided by delivered e-mails
is_bounce boolean | Single-page session
session_duration_seconds int32 | Session duration in seconds
funnel_stage string | lead, mql, sql, opportunity, customer
days_to_convert int32 | Days from lead creation to conversion
attributed_revenue decimal(18,2) | Revenue attributed to the channel
roi decimal(9,4) | Attributed revenue minus spend, divided by spend
report_month date nn | First day of the reporting month
video_views int64 | Video ad views (at least 2 seconds in view)
video_completion_rate decimal(5,4) | Share of video views watched to the end
touchpoint_id string nn | Marketing touchpoint identifier
touchpoint_at timestamp nn | Time of the touchpoint
attribution_model string nn | first_touch, last_touch, linear, time_decay
attribution_weight decimal(9,6) | Share of the order credited to the touchpoint

product_name string nn | Product display name
category string | Product category
brand string | Brand
unit_cost decimal(18,4) | Standard unit cost in USD
weight_kg decimal(10,3) | Shipping weight in kilograms
is_discontinued boolean | Product is no longer sold
warehouse_id string nn | Warehouse identifier
warehouse_name string | Warehouse name
city string | City
warehouse_type string | fulfillment_center, store_backroom, cross_dock
capacity_pallets int32 | Storage capacity in pallets
snapshot_date date nn | Date of the stock snapshot
on_hand_qty int32 | Units physically on hand
reserved_qty int32 | Units reserved for open orders
available_qty int32 | On hand minus reserved units
movement_id string nn | Stock movement identifier
movement_type string nn | receipt, pick, transfer, adjustment, return
moved_at timestamp nn | Time of the movement
quantity_delta int32 nn | Signed change in units
reference_id string | Source document (PO, order, transfer) of the movement
purchase_order_id string nn | Purchase order number
supplier_id string nn | Supplier identifier
po_status string | draft, sent, confirmed, partially_received, received, cancelled
ordered_at timestamp | Time the purchase order was placed
expected_delivery_date date | Promised delivery date
ordered_qty int32 | Units ordered
received_qty int32 | Units received so far
supplier_name string | Supplier name
supplier_country string | Supplier country code
lead_time_days int32 | Average lead time in days
contact_email string pii | Supplier contact e-mail
count_id string nn | Cycle count identifier
counted_at timestamp nn | Time of the count
counted_qty int32 | Units counted
system_qty int32 | Units expected by the WMS
counter_employee_id string | Employee who performed the count
inventory_value_usd decimal(18,2) | On hand quantity times unit cost
turnover_ratio decimal(9,4) | Cost of goods sold divided by average inventory
days_of_supply decimal(9,2) | Available units divided by average daily demand
shrinkage_qty int32 | System quantity minus counted quantity
shrinkage_value_usd decimal(18,2) | Shrinkage valued at unit cost
fill_rate decimal(5,4) | Received units divided by ordered units
safety_stock_qty int32 | Minimum stock level before replenishment is triggered
reorder_point int32 | Available quantity at which a purchase order is raised

shipment_id string nn | Shipment identifier
carrier_id string nn | Carrier identifier
tracking_number string | Carrier tracking number
ship_date date | Date the shipment left the warehouse
service_level string | ground, express, overnight, freight
package_count int32 | Number of packages in the shipment
destination_postal_code string pii | Destination postal code
destination_country string | Destination country code
shipment_event_id string nn | Tracking event identifier
event_code string | Carrier status code
event_location string | Location reported by the carrier
carrier_name string nn | Carrier name
scac_code string | Standard Carrier Alpha Code
route_id string nn | Route identifier
origin_warehouse_id string | Origin warehouse
destination_region string | Destination region
distance_km decimal(10,2) | Route distance in kilometers
transit_days_sla int32 | Promised transit time in days
attempt_id string nn | Delivery attempt identifier
attempted_at timestamp nn | Time of the attempt
attempt_number int32 | Attempt sequence number
outcome string | delivered, no_access, recipient_absent, refused, damaged
driver_notes string | Free-text notes from the driver
freight_invoice_id string nn | Carrier freight invoice identifier
billed_amount decimal(18,2) | Amount billed by the carrier
billed_weight_kg decimal(10,3) | Weight billed by the carrier
fuel_surcharge decimal(18,2) | Fuel surcharge
return_id string nn | Return identifier (RMA)
return_reason string | damaged, wrong_item, not_as_described, changed_mind, other
return_status string | requested, in_transit, received, refunded, rejected
requested_at timestamp | Time the return was requested
refund_amount decimal(18,2) | Amount refunded
delivered_at timestamp | Time of successful delivery
transit_days int32 | Days between ship date and delivery
is_on_time boolean | Delivered within the SLA
attempts_to_deliver int32 | Attempts needed for delivery
cost_per_kg decimal(18,4) | Billed amount per billed kilogram
on_time_rate decimal(5,4) | Share of shipments delivered on time
avg_cost_per_shipment decimal(18,2) | Average freight cost per shipment
shipment_count int64 | Number of shipments

employee_id string nn | Employee identifier
legal_name string pii | Employee legal name
work_email string pii | Corporate e-mail address
hire_date date nn | Date of hire
termination_date date | Date of termination (null if active)
employment_type string | full_time, part_time, contractor, intern
manager_id string | Employee id of the direct manager
position_id string | Position identifier
location string | Office location or remote
date_of_birth date pii | Date of birth
legacy_employee_code string | Employee number from the pre-2019 HRIS
department_name string nn | Department name
parent_department_id string | Parent department
department_head_id string | Employee id of the department head
job_title string nn | Job title
job_family string | Job family (engineering, sales, g_and_a, operations)
job_level string | Career level (IC1-IC7, M1-M5)
compensation_id string nn | Compensation record identifier
effective_date date nn | Date the record takes effect
base_salary decimal(18,2) pii | Annual base salary
bonus_target_pct decimal(5,2) | Target bonus as percentage of base salary
equity_units int64 | Granted equity units
change_reason string | hire, promotion, merit, market_adjustment, transfer
request_id string nn | Time-off request identifier
leave_type string | vacation, sick, parental, unpaid, bereavement
days_requested decimal(5,1) | Working days requested
approval_status string | pending, approved, rejected, cancelled
requisition_id string nn | Job requisition identifier
requisition_status string | open, on_hold, filled, cancelled
hiring_manager_id string | Hiring manager employee id
target_start_date date | Desired start date
candidate_id string nn | Candidate identifier
candidate_name string pii | Candidate full name
candidate_email string pii | Candidate e-mail address
application_stage string | applied, screen, onsite, offer, hired, rejected
source string | Candidate source (referral, job_board, agency, sourced)
applied_at timestamp | Time of application
headcount_month date nn | First day of the month
headcount int32 | Employees at month end
hires int32 | Hires in the month
terminations int32 | Terminations in the period
quarter_start date nn | First day of the quarter
attrition_rate decimal(5,4) | Terminations divided by average headcount
tenure_days int32 | Days since hire
days_to_fill int32 | Days from requisition open to offer accepted
applicants int32 | Applicants on the requisition
offers_extended int32 | Offers extended
total_days_off decimal(7,1) | Approved days off

user_id string nn | Product user identifier
signup_at timestamp | Time the user signed up
plan string | free, pro, team, enterprise
acquisition_channel string | Channel the user was acquired through
event_id string nn | Event identifier (Segment messageId)
event_name string nn | Tracked event name
event_ts timestamp nn | Client timestamp of the event
platform string | web, ios, android
app_version string | Application version
properties map<string,string> | Event properties
flag_key string nn | Feature flag key
flag_description string | What the flag controls
rollout_pct int32 | Percent of users the flag is enabled for
is_enabled boolean | Flag is globally enabled
experiment_id string nn | Experiment identifier
experiment_name string | Experiment name
hypothesis string | Experiment hypothesis
variant string | Assigned variant (control, treatment_a, treatment_b)
assigned_at timestamp | Time the user was assigned to the variant
release_id string nn | Release identifier
released_at timestamp | Release time
release_notes string | Release notes
subscription_id string nn | Subscription identifier
subscription_status string | trialing, active, past_due, cancelled
mrr_usd decimal(18,2) | Monthly recurring revenue in USD
cancelled_at timestamp | Subscription cancellation time
dau int64 | Daily active users
wau int64 | Weekly active users (trailing 7 days)
mau int64 | Monthly active users (trailing 28 days)
adopting_users int64 | Users who used the feature
adoption_rate decimal(5,4) | Adopting users divided by eligible users
exposed_users int64 | Users exposed to the variant
converted_users int64 | Users who reached the goal metric
conversion_rate decimal(9,6) | Converted users divided by exposed users
p_value decimal(10,8) | Two-sided p-value against control
cohort_month date nn | Signup month of the cohort
months_since_signup int32 nn | Months since signup
retained_users int64 | Users active in the month
retention_rate decimal(5,4) | Retained users divided by cohort size
crash_free_rate decimal(7,6) | Share of sessions without a crash
error_events int64 | Error events after the release
segments array<string> | Behavioural segments the user belongs to

ticket_id string nn | Ticket identifier
requester_email string pii | E-mail of the person who opened the ticket
subject string | Ticket subject
priority string | low, normal, high, urgent
ticket_status string | new, open, pending, solved, closed
agent_id string | Assigned agent
sla_policy_id string | Applied SLA policy
solved_at timestamp | Time the ticket was solved
ticket_tags array<string> | Tags applied to the ticket by agents and triggers
comment_id string nn | Comment identifier
author_id string | User or agent who wrote the comment
is_public boolean | Comment visible to the requester
body string pii | Comment text (may contain personal data)
agent_name string pii | Agent display name
team string | Support team or queue
survey_id string nn | Survey response identifier
score int32 | CSAT score (1-5)
comment string pii | Free-text feedback
responded_at timestamp | Time of response
sla_name string | SLA policy name
first_response_minutes int32 | Target first response time in minutes
resolution_minutes int32 | Target resolution time in minutes
chat_id string nn | Chat session identifier
wait_seconds int32 | Seconds before an agent joined
message_count int32 | Messages exchanged
article_id string nn | Help center article identifier
title string | Article title
view_count int64 | Article views
helpful_votes int64 | Helpful votes
first_response_at timestamp | Time of the first public agent reply
time_to_first_response_minutes int32 | Minutes to the first public reply
time_to_resolution_minutes int32 | Minutes to solve
sla_breached boolean | Resolution exceeded the SLA target
reopen_count int32 | Times the ticket was reopened
csat_score decimal(3,2) | Average CSAT score
responses int64 | Survey responses
backlog_date date nn | Calendar date of the backlog snapshot
open_tickets int64 | Tickets open at end of day
tickets_solved int64 | Tickets solved
chats_handled int64 | Chat sessions handled
avg_handle_minutes decimal(9,2) | Average handling time per ticket or chat in minutes
deflected_tickets int64 | Help center visits not followed by a ticket within 24 hours
"""


def parse_columns(text):
    cols = {}
    for line in text.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        head, desc = [p.strip() for p in line.split("|", 1)]
        parts = head.split()
        name, ctype, flags = parts[0], parts[1], set(parts[2:])
        assert name not in cols, "column defined twice: " + name
        assert flags <= {"nn", "pii"}, line
        cols[name] = {"name": name, "type": ctype, "nullable": "nn" not in flags,
                      "description": desc, "pii": "pii" in flags}
    return cols


COLUMNS = parse_columns(COLUMN_SPECS)


def column(name, nullable=None):
    c = COLUMNS[name]
    out = {"name": c["name"], "type": c["type"],
           "nullable": c["nullable"] if nullable is None else nullable,
           "description": c["description"]}
    if c["pii"]:
        out["pii"] = True
    return out


# ---------------------------------------------------------------------------
# Domains.  Each entity becomes raw_<entity> (landed as-is) and
# stg_<entity> (cleaned, typed); marts are built from stg tables and other
# marts, possibly of other domains ("domain/table").
#
# entity: (name, what it is, columns, options)
# mart:   (name, description, sources, columns, options)
# options: pk, reference (no partitioning), tier, tags, owner, schedule
# ---------------------------------------------------------------------------

DOMAINS = [
    {
        "name": "sales", "team": "sales-analytics",
        "source": "Salesforce and the order management system",
        "entities": [
            ("orders", "customer orders",
             "order_id customer_id order_status order_date currency subtotal_amount "
             "discount_amount tax_amount total_amount sales_channel created_at updated_at", {}),
            ("order_items", "order lines",
             "order_item_id order_id product_id quantity unit_price line_discount line_total created_at", {}),
            ("customers", "customer master records",
             "customer_id account_id first_name last_name email phone country_code segment "
             "signup_date is_active created_at updated_at", {}),
            ("accounts", "B2B accounts",
             "account_id account_name industry employee_band billing_country account_owner_id "
             "annual_revenue created_at updated_at", {"reference": True}),
            ("opportunities", "CRM opportunities",
             "opportunity_id account_id stage amount close_date probability owner_rep_id "
             "lead_source created_at updated_at", {}),
            ("quotes", "sales quotes",
             "quote_id opportunity_id quote_status valid_until total_amount discount_pct currency created_at", {}),
            ("price_lists", "regional price lists",
             "price_list_id product_id region currency list_price effective_from effective_to",
             {"reference": True, "pk": ["price_list_id", "product_id"]}),
        ],
        "marts": [
            ("dim_customers", "One row per customer with account attributes and lifetime value.",
             ["stg_customers", "stg_accounts", "fct_orders"],
             "customer_id account_id account_name full_name email segment industry country_code "
             "signup_date is_active lifetime_value", {"tier": "tier-1", "tags": ["certified", "ml-feature"]}),
            ("fct_orders", "One row per order with line totals rolled up; the source of truth for order revenue.",
             ["stg_orders", "stg_order_items", "stg_customers"],
             "order_id customer_id order_date order_status sales_channel item_count gross_amount "
             "discount_amount net_amount tax_amount currency",
             {"tags": ["executive-dashboard"], "schedule": "20 * * * *"}),
            ("fct_pipeline", "Open and closed opportunities with weighted amounts and the latest quote.",
             ["stg_opportunities", "stg_accounts", "stg_quotes"],
             "opportunity_id account_id stage amount weighted_amount close_date latest_quote_id days_in_stage",
             {"owner": "revenue-operations"}),
            ("agg_daily_revenue", "Daily gross and net revenue per sales channel.",
             ["fct_orders"],
             "revenue_date sales_channel order_count gross_revenue net_revenue avg_order_value",
             {"pk": ["revenue_date", "sales_channel"], "tags": ["executive-dashboard"]}),
            ("agg_monthly_bookings", "Closed-won bookings per month and customer segment.",
             ["fct_pipeline", "dim_customers"],
             "booking_month segment bookings_amount won_deal_count",
             {"pk": ["booking_month", "segment"], "owner": "revenue-operations", "schedule": "30 6 1 * *"}),
            ("fct_win_rate", "Quarterly win rate per sales rep.",
             ["fct_pipeline"],
             "fiscal_quarter owner_rep_id opportunities_closed opportunities_won win_rate",
             {"pk": ["fiscal_quarter", "owner_rep_id"], "owner": "revenue-operations"}),
        ],
    },
    {
        "name": "finance", "team": "finance-data",
        "source": "the NetSuite ERP",
        "entities": [
            ("invoices", "customer invoices",
             "invoice_id customer_id invoice_date due_date invoice_status currency total_amount "
             "amount_due created_at updated_at", {}),
            ("payments", "incoming customer payments",
             "payment_id invoice_id payment_date payment_method payment_amount currency created_at", {}),
            ("general_ledger_entries", "general ledger journal lines",
             "journal_entry_id line_number gl_account_code posting_date debit_amount credit_amount "
             "currency cost_center_id memo created_at",
             {"pk": ["journal_entry_id", "line_number"]}),
            ("vendor_bills", "accounts payable vendor bills",
             "bill_id vendor_id vendor_name invoice_date due_date bill_amount currency cost_center_id "
             "created_at updated_at", {}),
            ("cost_centers", "cost center hierarchy",
             "cost_center_id cost_center_name department_id parent_cost_center_id budget_owner_email is_active",
             {"reference": True}),
            ("exchange_rates", "daily FX rates",
             "rate_date from_currency to_currency fx_rate",
             {"pk": ["rate_date", "from_currency", "to_currency"]}),
            ("budgets", "approved budget lines",
             "budget_id cost_center_id gl_account_code fiscal_month budget_amount created_at", {}),
        ],
        "marts": [
            ("fct_general_ledger",
             "Posted general ledger lines converted to the reporting curency (USD) at the posting-date rate.",
             ["stg_general_ledger_entries", "stg_cost_centers", "stg_exchange_rates"],
             "journal_entry_id line_number posting_date gl_account_code cost_center_id debit_amount "
             "credit_amount currency amount_usd",
             {"pk": ["journal_entry_id", "line_number"], "tier": "tier-1",
              "tags": ["certified", "finance-reporting"]}),
            ("fct_invoices", "Invoices with payments applied and paid status.",
             ["stg_invoices", "stg_payments"],
             "invoice_id customer_id invoice_date due_date invoice_status total_amount amount_due is_paid currency",
             {"tier": "tier-1", "tags": ["finance-reporting"]}),
            ("fct_ar_aging", "Accounts receivable aging snapshot per open invoice.",
             ["fct_invoices"],
             "invoice_id customer_id due_date amount_due days_past_due aging_bucket currency", {}),
            ("agg_monthly_pnl", "Monthly actuals versus budget per cost center and GL account.",
             ["fct_general_ledger", "stg_budgets"],
             "fiscal_month cost_center_id gl_account_code actual_amount budget_amount variance_amount",
             {"pk": ["fiscal_month", "cost_center_id", "gl_account_code"], "tags": ["executive-dashboard"],
              "schedule": "0 7 2 * *"}),
            ("fct_cash_flow", "Daily cash in and cash out from customer payments and vendor bills.",
             ["stg_payments", "stg_vendor_bills"],
             "activity_date cash_in cash_out net_cash_flow", {"pk": ["activity_date"]}),
            ("dim_cost_centers", "Cost center hierarchy with owners.",
             ["stg_cost_centers"],
             "cost_center_id cost_center_name department_id parent_cost_center_id budget_owner_email is_active",
             {"reference": True}),
            ("fct_revenue_recognition", "Recognized and deferred revenue per order and month (ASC 606).",
             ["fct_invoices", "sales/fct_orders"],
             "order_id fiscal_month recognized_revenue deferred_revenue currency",
             {"pk": ["order_id", "fiscal_month"], "tier": "tier-1", "tags": ["finance-reporting"]}),
        ],
    },
    {
        "name": "marketing", "team": "marketing-analytics",
        "source": "HubSpot and the ad platforms",
        "entities": [
            ("campaigns", "marketing campaigns",
             "campaign_id campaign_name channel objective start_date end_date budget_usd created_at updated_at",
             {"reference": True}),
            ("ad_spend", "daily ad spend per campaign",
             "spend_date campaign_id ad_platform impressions clicks spend_usd currency",
             {"pk": ["spend_date", "campaign_id", "ad_platform"]}),
            ("ad_clicks", "ad click events",
             "click_id clicked_at campaign_id visitor_id ip_address utm_source utm_medium", {}),
            ("email_sends", "marketing e-mail sends",
             "email_send_id campaign_id recipient_email template_id sent_at", {}),
            ("email_events", "e-mail engagement events",
             "email_event_id email_send_id event_type event_at", {}),
            ("web_sessions", "website sessions",
             "session_id visitor_id session_start session_end landing_page referrer utm_source utm_medium "
             "page_views device_type country_code", {}),
            ("leads", "marketing leads",
             "lead_id lead_email company_name lead_status lead_source campaign_id converted_at created_at updated_at",
             {}),
        ],
        "marts": [
            ("dim_campaigns", "Campaign attributes and budget.",
             ["stg_campaigns"],
             "campaign_id campaign_name channel objective start_date end_date budget_usd",
             {"reference": True}),
            ("fct_campaign_performance", "Daily spend, clicks and conversions per campaign and platform.",
             ["stg_campaigns", "stg_ad_spend", "stg_ad_clicks"],
             "spend_date campaign_id ad_platform impressions clicks ctr spend_usd cpc_usd conversions",
             {"pk": ["spend_date", "campaign_id", "ad_platform"], "tags": ["executive-dashboard"]}),
            ("fct_email_engagement", "Sends, opens and unsubscribes per campaign and template.",
             ["stg_email_sends", "stg_email_events"],
             "campaign_id template_id sends opens open_rate unsubscribes",
             {"pk": ["campaign_id", "template_id"]}),
            ("fct_web_sessions", "Sessionized web traffic with bounce and duration.",
             ["stg_web_sessions"],
             "session_id visitor_id session_start landing_page utm_source utm_medium device_type "
             "page_views is_bounce session_duration_seconds country_code",
             {"schedule": "40 * * * *"}),
            ("fct_lead_funnel", "Leads through the funnel to opportunity, joined with CRM.",
             ["stg_leads", "stg_web_sessions", "sales/stg_opportunities"],
             "lead_id campaign_id funnel_stage lead_source created_at converted_at days_to_convert", {}),
            ("agg_channel_roi", "Monthly spend, attributed revenue and ROI per channel.",
             ["fct_campaign_performance", "dim_campaigns", "sales/fct_orders"],
             "report_month channel spend_usd attributed_revenue roi",
             {"pk": ["report_month", "channel"], "schedule": "0 8 1 * *", "tags": ["executive-dashboard"]}),
        ],
    },
    {
        "name": "inventory", "team": "supply-chain-data",
        "source": "the warehouse management system",
        "entities": [
            ("products", "product catalog",
             "product_id product_name category brand unit_cost weight_kg is_discontinued created_at updated_at",
             {"reference": True}),
            ("warehouses", "warehouses and stores",
             "warehouse_id warehouse_name warehouse_type city country_code capacity_pallets is_active",
             {"reference": True}),
            ("stock_levels", "daily stock snapshots",
             "snapshot_date warehouse_id product_id on_hand_qty reserved_qty available_qty",
             {"pk": ["snapshot_date", "warehouse_id", "product_id"]}),
            ("stock_movements", "stock movements",
             "movement_id warehouse_id product_id movement_type quantity_delta reference_id moved_at", {}),
            ("purchase_orders", "supplier purchase orders",
             "purchase_order_id supplier_id warehouse_id po_status ordered_at expected_delivery_date "
             "ordered_qty received_qty currency total_amount", {}),
            ("suppliers", "suppliers",
             "supplier_id supplier_name supplier_country contact_email lead_time_days is_active",
             {"reference": True}),
            ("cycle_counts", "cycle counts",
             "count_id warehouse_id product_id counted_at counted_qty system_qty counter_employee_id", {}),
        ],
        "marts": [
            ("dim_products", "Product catalog with cost and status.",
             ["stg_products"],
             "product_id product_name category brand unit_cost weight_kg is_discontinued",
             {"reference": True, "tier": "tier-1", "tags": ["certified"]}),
            ("dim_warehouses", "Warehouses and stores.",
             ["stg_warehouses"],
             "warehouse_id warehouse_name warehouse_type city country_code capacity_pallets is_active",
             {"reference": True}),
            ("fct_stock_snapshot_daily", "Daily on-hand, reserved and available units with value per SKU and site.",
             ["stg_stock_levels", "dim_products", "dim_warehouses"],
             "snapshot_date warehouse_id product_id on_hand_qty reserved_qty available_qty inventory_value_usd",
             {"pk": ["snapshot_date", "warehouse_id", "product_id"]}),
            ("fct_stock_movements", "Stock movements with signed quantities.",
             ["stg_stock_movements"],
             "movement_id moved_at warehouse_id product_id movement_type quantity_delta reference_id", {}),
            ("fct_purchase_orders", "Purchase orders with supplier attributes and fill rate.",
             ["stg_purchase_orders", "stg_suppliers"],
             "purchase_order_id supplier_id supplier_name warehouse_id po_status ordered_at "
             "expected_delivery_date ordered_qty received_qty fill_rate", {}),
            ("agg_inventory_turnover", "Monthly inventory turnover and days of supply per product.",
             ["fct_stock_snapshot_daily", "sales/fct_orders"],
             "report_month product_id turnover_ratio days_of_supply",
             {"pk": ["report_month", "product_id"], "schedule": "0 5 1 * *"}),
            ("fct_shrinkage", "Shrinkage found by cycle counts.",
             ["stg_cycle_counts", "dim_products"],
             "count_id counted_at warehouse_id product_id system_qty counted_qty shrinkage_qty shrinkage_value_usd",
             {}),
        ],
    },
    {
        "name": "logistics", "team": "supply-chain-data",
        "source": "the transport management system and carrier APIs",
        "entities": [
            ("shipments", "outbound shipments",
             "shipment_id order_id carrier_id warehouse_id tracking_number ship_date service_level "
             "package_count destination_postal_code destination_country created_at", {}),
            ("shipment_events", "carrier tracking events",
             "shipment_event_id shipment_id event_code event_location event_at", {}),
            ("carriers", "carriers",
             "carrier_id carrier_name scac_code country_code is_active", {"reference": True}),
            ("routes", "delivery routes",
             "route_id origin_warehouse_id destination_region distance_km transit_days_sla",
             {"reference": True}),
            ("delivery_attempts", "delivery attempts",
             "attempt_id shipment_id attempted_at attempt_number outcome driver_notes", {}),
            ("freight_invoices", "carrier freight invoices",
             "freight_invoice_id carrier_id shipment_id invoice_date billed_amount billed_weight_kg "
             "fuel_surcharge currency", {}),
            ("returns", "customer returns",
             "return_id order_id shipment_id return_reason return_status requested_at refund_amount", {}),
        ],
        "marts": [
            ("fct_shipments", "Shipments with carrier and latest tracking status.",
             ["stg_shipments", "stg_carriers", "stg_shipment_events"],
             "shipment_id order_id carrier_id carrier_name ship_date service_level destination_country delivered_at",
             {"schedule": "10 * * * *"}),
            ("fct_delivery_performance", "Transit time, attempts and on-time flag per delivered shipment.",
             ["fct_shipments", "stg_delivery_attempts", "stg_routes"],
             "shipment_id carrier_id ship_date delivered_at transit_days attempts_to_deliver is_on_time", {}),
            ("dim_carriers", "Carriers.",
             ["stg_carriers"],
             "carrier_id carrier_name scac_code country_code is_active", {"reference": True}),
            ("fct_freight_costs", "Freight cost per shipment including surcharges.",
             ["stg_freight_invoices", "stg_shipments"],
             "freight_invoice_id shipment_id carrier_id invoice_date billed_amount fuel_surcharge "
             "billed_weight_kg cost_per_kg currency", {}),
            ("fct_returns", "Returns joined to the original order.",
             ["stg_returns", "sales/fct_orders"],
             "return_id order_id customer_id return_reason return_status requested_at refund_amount", {}),
            ("agg_carrier_scorecard", "Monthly on-time rate and cost per carrier.",
             ["fct_delivery_performance", "fct_freight_costs", "dim_carriers"],
             "report_month carrier_id shipment_count on_time_rate avg_cost_per_shipment",
             {"pk": ["report_month", "carrier_id"], "schedule": "0 6 1 * *"}),
        ],
    },
    {
        "name": "hr", "team": "people-analytics",
        "source": "Workday",
        "entities": [
            ("employees", "employee records",
             "employee_id legal_name work_email hire_date termination_date employment_type manager_id "
             "department_id position_id location date_of_birth legacy_employee_code updated_at", {}),
            ("departments", "departments",
             "department_id department_name parent_department_id department_head_id cost_center_id",
             {"reference": True}),
            ("positions", "positions",
             "position_id job_title job_family job_level department_id", {"reference": True}),
            ("compensation", "compensation changes",
             "compensation_id employee_id effective_date base_salary bonus_target_pct equity_units "
             "currency change_reason", {}),
            ("time_off_requests", "time-off requests",
             "request_id employee_id leave_type start_date end_date days_requested approval_status created_at", {}),
            ("job_requisitions", "job requisitions",
             "requisition_id position_id hiring_manager_id requisition_status opened_at target_start_date", {}),
            ("candidates", "candidates and applications",
             "candidate_id requisition_id candidate_name candidate_email application_stage source applied_at", {}),
        ],
        "marts": [
            ("dim_employees", "Current employees with department, position and tenure.",
             ["stg_employees", "stg_departments", "stg_positions"],
             "employee_id legal_name work_email department_id department_name job_title job_level "
             "manager_id location hire_date tenure_days employment_type legacy_employee_code",
             {"reference": True, "tier": "tier-1"}),
            ("fct_headcount_monthly", "Month-end headcount, hires and terminations per department.",
             ["stg_employees", "stg_departments"],
             "headcount_month department_id headcount hires terminations",
             {"pk": ["headcount_month", "department_id"], "schedule": "0 4 1 * *"}),
            ("fct_compensation_history", "Compensation changes per employee.",
             ["stg_compensation", "dim_employees"],
             "compensation_id employee_id effective_date base_salary bonus_target_pct equity_units "
             "currency change_reason", {}),
            ("fct_recruiting_funnel", "Applicants, offers and time to fill per requisition.",
             ["stg_job_requisitions", "stg_candidates"],
             "requisition_id position_id requisition_status opened_at applicants offers_extended days_to_fill", {}),
            ("fct_time_off", "Approved time off per employee and leave type.",
             ["stg_time_off_requests"],
             "employee_id leave_type start_date total_days_off",
             {"pk": ["employee_id", "leave_type", "start_date"]}),
            ("agg_attrition_quarterly", "Quarterly attrition rate per department.",
             ["fct_headcount_monthly"],
             "quarter_start department_id headcount terminations attrition_rate",
             {"pk": ["quarter_start", "department_id"], "schedule": "0 7 1 1,4,7,10 *",
              "tags": ["executive-dashboard"]}),
        ],
    },
    {
        "name": "product", "team": "product-analytics",
        "source": "the Segment event stream and the application database",
        "entities": [
            ("users", "product users",
             "user_id email signup_at plan acquisition_channel country_code updated_at", {}),
            ("events", "tracked product events",
             "event_id user_id event_name event_ts platform app_version properties", {}),
            ("feature_flags", "feature flags",
             "flag_key flag_description rollout_pct is_enabled updated_at", {"reference": True}),
            ("experiments", "A/B experiments",
             "experiment_id experiment_name hypothesis start_date end_date", {"reference": True}),
            ("experiment_assignments", "experiment assignments",
             "experiment_id user_id variant assigned_at", {"pk": ["experiment_id", "user_id"]}),
            ("app_releases", "application releases",
             "release_id platform app_version released_at release_notes", {"reference": True}),
            ("subscriptions", "paid subscriptions",
             "subscription_id user_id plan subscription_status mrr_usd started_at cancelled_at", {}),
        ],
        "marts": [
            ("dim_users", "One row per user with plan, acquisition channel and segments.",
             ["stg_users", "stg_subscriptions"],
             "user_id email signup_at plan acquisition_channel country_code segments",
             {"reference": True, "tier": "tier-1", "tags": ["ml-feature"]}),
            ("fct_daily_active_users", "Daily, weekly and monthly active users per platform.",
             ["stg_events", "stg_users"],
             "activity_date platform dau wau mau",
             {"pk": ["activity_date", "platform"], "tier": "tier-1",
              "tags": ["certified", "executive-dashboard"]}),
            ("fct_feature_adoption", "Daily adoption of flagged features.",
             ["stg_events", "stg_feature_flags"],
             "activity_date flag_key adopting_users adoption_rate",
             {"pk": ["activity_date", "flag_key"], "tags": ["experimental"]}),
            ("fct_experiment_results", "Exposure, conversion and significance per experiment variant.",
             ["stg_experiment_assignments", "stg_experiments", "stg_events"],
             "experiment_id variant exposed_users converted_users conversion_rate p_value",
             {"pk": ["experiment_id", "variant"]}),
            ("fct_subscriptions", "Subscriptions with MRR and status.",
             ["stg_subscriptions", "stg_users"],
             "subscription_id user_id plan subscription_status mrr_usd started_at cancelled_at",
             {"tags": ["finance-reporting"]}),
            ("agg_retention_cohorts", "Monthly retention per signup cohort.",
             ["fct_daily_active_users", "dim_users"],
             "cohort_month months_since_signup retained_users retention_rate",
             {"pk": ["cohort_month", "months_since_signup"], "schedule": "0 9 1 * *"}),
            ("fct_release_health", "Crash-free rate and errors per app release.",
             ["stg_app_releases", "stg_events"],
             "release_id platform app_version released_at crash_free_rate error_events",
             {"tags": ["customer-facing"]}),
        ],
    },
    {
        "name": "support", "team": "support-insights",
        "source": "Zendesk",
        "entities": [
            ("tickets", "support tickets",
             "ticket_id requester_email subject priority ticket_status agent_id sla_policy_id ticket_tags "
             "opened_at solved_at updated_at", {}),
            ("ticket_comments", "ticket comments",
             "comment_id ticket_id author_id is_public body created_at", {}),
            ("agents", "support agents",
             "agent_id agent_name team is_active", {"reference": True}),
            ("satisfaction_surveys", "CSAT survey responses",
             "survey_id ticket_id score comment responded_at", {}),
            ("sla_policies", "SLA policies",
             "sla_policy_id sla_name priority first_response_minutes resolution_minutes", {"reference": True}),
            ("chat_sessions", "live chat sessions",
             "chat_id agent_id started_at ended_at wait_seconds message_count", {}),
            ("knowledge_articles", "help center articles",
             "article_id title view_count helpful_votes updated_at", {"reference": True}),
        ],
        "marts": [
            ("fct_tickets", "Tickets with SLA targets, first response and resolution times.",
             ["stg_tickets", "stg_sla_policies", "stg_agents", "stg_ticket_comments"],
             "ticket_id priority ticket_status agent_id opened_at first_response_at solved_at "
             "time_to_first_response_minutes time_to_resolution_minutes sla_breached reopen_count",
             {"tier": "tier-1", "schedule": "5 * * * *"}),
            ("dim_agents", "Support agents and teams.",
             ["stg_agents"],
             "agent_id agent_name team is_active", {"reference": True}),
            ("fct_csat", "CSAT responses joined to tickets.",
             ["stg_satisfaction_surveys", "fct_tickets"],
             "survey_id ticket_id agent_id score responded_at", {"tags": ["executive-dashboard"]}),
            ("fct_chat_sessions", "Chat sessions with wait and handle time.",
             ["stg_chat_sessions"],
             "chat_id agent_id started_at ended_at wait_seconds message_count", {}),
            ("fct_article_deflection", "Help center views and deflected tickets per article and day.",
             ["stg_knowledge_articles", "fct_tickets"],
             "activity_date article_id view_count deflected_tickets",
             {"pk": ["activity_date", "article_id"], "tags": ["experimental"]}),
            ("agg_ticket_backlog_legacy", "DEPRECATED: daily open ticket backlog from the old queue model; use fct_tickets.",
             ["stg_tickets"],
             "backlog_date open_tickets tickets_solved",
             {"pk": ["backlog_date"], "tier": "tier-3", "tags": ["deprecated"]}),
        ],
    },
]

DOMAIN_INDEX = {d["name"]: i for i, d in enumerate(DOMAINS)}

# ---------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------

TAGS = [
    ("pii", "Contains personally identifiable information; columns marked pii are masked by policy.",
     "classification", "#d73a49"),
    ("confidential", "Confidential business data; access limited to the owning domain.",
     "classification", "#b31d28"),
    ("internal", "Internal data that any employee with a business need may read.", "classification", "#6a737d"),
    ("gdpr", "Subject to GDPR data subject requests (access, erasure).", "compliance", "#0366d6"),
    ("ccpa", "Subject to CCPA consumer requests.", "compliance", "#005cc5"),
    ("sox", "In scope for SOX financial controls; changes need an approved change ticket.",
     "compliance", "#6f42c1"),
    ("tier-1", "Business critical: 1 hour freshness SLO, paged 24x7.", "criticality", "#cb2431"),
    ("tier-2", "Important: next-business-day fixes.", "criticality", "#f66a0a"),
    ("tier-3", "Best effort.", "criticality", "#ffd33d"),
    ("raw", "Landed as-is from the source system; not for direct analysis.", "layer", "#959da5"),
    ("staging", "Cleaned, typed and deduplicated source data.", "layer", "#79b8ff"),
    ("mart", "Modelled for analysis and reporting.", "layer", "#28a745"),
    ("hourly", "Refreshed at least hourly.", "freshness", "#34d058"),
    ("daily", "Refreshed daily or less often.", "freshness", "#85e89d"),
    ("certified", "Reviewed and certified by data governance; safe for external reporting.",
     "quality", "#22863a"),
    ("experimental", "Under development; schema and semantics may change without notice.",
     "lifecycle", "#e36209"),
    ("deprecated", "Scheduled for removal; do not build new dependencies.", "lifecycle", "#586069"),
    ("cross-domain", "Built from tables of more than one domain.", "usage", "#0e8a16"),
    ("executive-dashboard", "Feeds the executive KPI dashboards.", "usage", "#1d76db"),
    ("finance-reporting", "Used in statutory or management financial reporting.", "usage", "#5319e7"),
    ("customer-facing", "Feeds data shown to customers in the product.", "usage", "#fbca04"),
    ("ml-feature", "Used as a feature source by production ML models.", "usage", "#c5def5"),
]
TAG_ORDER = {t[0]: i for i, t in enumerate(TAGS)}


def sort_tags(tags):
    assert all(t in TAG_ORDER for t in tags), tags
    return sorted(set(tags), key=TAG_ORDER.__getitem__)


# ---------------------------------------------------------------------------
# Teams
# ---------------------------------------------------------------------------

TEAMS = [
    ("sales-analytics", "Sales Analytics", "Sales reporting, customer and order models.", 5, "business-hours"),
    ("finance-data", "Finance Data", "General ledger, AR/AP and revenue recognition models.", 4, "business-hours"),
    ("marketing-analytics", "Marketing Analytics", "Campaign, e-mail and web analytics.", 5, "business-hours"),
    ("supply-chain-data", "Supply Chain Data", "Inventory, purchasing and logistics models.", 6, "business-hours"),
    ("people-analytics", "People Analytics", "Workforce and recruiting analytics.", 3, "business-hours"),
    ("product-analytics", "Product Analytics", "Product usage, experimentation and subscriptions.", 6, "business-hours"),
    ("support-insights", "Support Insights", "Customer support operations analytics.", 3, "business-hours"),
    ("data-platform", "Data Platform", "Ingestion, the lake and the orchestration platform.", 7, "24x7"),
    ("data-governance", "Data Governance", "Catalog, classification, access policies and certification.", 4, "business-hours"),
    ("ml-platform", "ML Platform", "Feature store and model serving.", 5, "24x7"),
    ("revenue-operations", "Revenue Operations", "Pipeline, bookings and sales performance reporting.", 4, "business-hours"),
    ("security-engineering", "Security Engineering", "Security monitoring and incident response.", 5, "24x7"),
]

FIRST = ["Aisha", "Ben", "Carla", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
         "Lars", "Maya", "Nikhil", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera",
         "Wen", "Ximena", "Yusuf", "Zoe", "Amara", "Bruno", "Chloe", "Diego", "Emil", "Fatima"]
LAST = ["Adeyemi", "Bauer", "Castillo", "Dubois", "Eriksen", "Fischer", "Gupta", "Haddad", "Ito",
        "Jansen", "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quinlan", "Rossi",
        "Schmidt", "Tanaka", "Usman", "Varga", "Weber", "Xu", "Yilmaz", "Zhang", "Novak", "Silva"]
ROLES = ["analytics engineer", "data engineer", "senior analytics engineer", "data analyst",
         "staff data engineer", "data scientist"]

used_names = set()


def make_members(rng, count, team_label):
    members = []
    for i in range(count):
        while True:
            first, last = rng.choice(FIRST), rng.choice(LAST)
            if (first, last) not in used_names:
                used_names.add((first, last))
                break
        role = ("manager, " + team_label) if i == 0 else rng.choice(ROLES)
        members.append({"name": first + " " + last,
                        "email": (first + "." + last).lower() + "@" + MAIL,
                        "role": role})
    return members


def oncall_phone(n):
    """A fictional on-call number (555-01xx is reserved for fiction)."""
    return "+1 415 555 01%02d" % n


def owner_item(rng, key, label, desc, size, hours, phone):
    return {
        "name": key,
        "display_name": label,
        "description": desc,
        "email": key + "@" + MAIL,
        "slack": "#" + key,
        "oncall": {
            "pagerduty_service": "pd-" + key,
            "escalation_policy": key + "-primary",
            "hours": hours,
            "phone": phone,  # sensitive: schemas/owner.json marks it, plans redact it
        },
        "members": make_members(rng, size, label),
    }


# ---------------------------------------------------------------------------
# Tables and lineage
# ---------------------------------------------------------------------------

def table_key(domain, name):
    return "tables/" + domain + "/" + name


def resolve(domain, src):
    return "tables/" + src if "/" in src else table_key(domain, src)


def partitioning(cols, layer, reference):
    if layer == "raw":
        return ["_ingest_date"]
    if reference:
        return []
    for c in cols:
        if c["type"] == "date":
            return [c["name"]]
    for c in cols:
        if c["type"] == "timestamp":
            return ["day(" + c["name"] + ")"]
    return []


def build_table(domain, name, layer, description, col_names, opts):
    d = domain
    if layer == "raw":
        cols = [column(c, nullable=True) for c in col_names.split()]
        cols += [column("_ingested_at"), column("_source_file"), column("_ingest_date")]
    else:
        cols = [column(c) for c in col_names.split()]
    pk = opts.get("pk", [cols[0]["name"]])
    if layer != "raw":
        for c in cols:  # key columns are never null once typed
            if c["name"] in pk:
                c["nullable"] = False
    has_pii = any(c.get("pii") for c in cols)
    tier = opts.get("tier") or {"raw": "tier-3", "staging": "tier-2", "mart": "tier-2"}[layer]
    tags = [layer, tier] + list(opts.get("tags", []))
    if has_pii:
        tags += ["pii", "gdpr"]
        if d["name"] in ("sales", "marketing", "product", "support"):
            tags.append("ccpa")
    tags.append("confidential" if d["name"] in ("finance", "hr") else "internal")
    if d["name"] == "finance" and layer != "raw":
        tags.append("sox")
    if layer != "raw":
        tags.append("hourly" if opts["schedule"].split()[1] == "*" else "daily")
    if any("/" in s for s in opts.get("sources", [])):
        tags.append("cross-domain")
    if layer == "raw":
        owner, retention, fmt = "data-platform", (30 if has_pii else 90), "parquet"
    elif layer == "staging":
        owner, retention, fmt = d["team"], 730, "delta"
    else:
        owner = opts.get("owner", d["team"])
        retention = 2555 if d["name"] in ("finance", "hr") else 1825
        fmt = "iceberg"
    zone = {"raw": "raw", "staging": "staging", "mart": "marts"}[layer]
    return {
        "name": name,
        "domain": d["name"],
        "description": description,
        "owner": owner,
        "format": fmt,
        "location": LAKE + "/" + zone + "/" + d["name"] + "/" + name + "/",
        "columns": cols,
        "primary_key": pk,
        "partitioned_by": partitioning(cols, layer, opts.get("reference", False)),
        "retention_days": retention,
        "tags": sort_tags(tags),
    }


def lineage_item(domain_name, name, sources, schedule):
    return {
        "target": table_key(domain_name, name),
        "sources": [resolve(domain_name, s) for s in sources],
        "job": "dbt:" + domain_name + "." + name,
        "schedule": schedule,
    }


def mart_schedule(d, opts):
    if "schedule" in opts:
        return opts["schedule"]
    return "%d %d * * *" % ((DOMAIN_INDEX[d["name"]] * 7) % 60, 2 + DOMAIN_INDEX[d["name"]] % 4)


def add_mart(items, d, mart):
    name, desc, sources, cols, opts = mart
    opts = dict(opts, sources=sources, schedule=mart_schedule(d, opts))
    items[table_key(d["name"], name)] = build_table(d, name, "mart", desc, cols, opts)
    items["lineage/" + d["name"] + "/" + name] = lineage_item(d["name"], name, sources, opts["schedule"])


def build_tables(items):
    for d in DOMAINS:
        for ent, what, cols, opts in d["entities"]:
            raw, stg = "raw_" + ent, "stg_" + ent
            items[table_key(d["name"], raw)] = build_table(
                d, raw, "raw", "Raw %s landed from %s (append-only, one row per extracted record)."
                % (what, d["source"]), cols, dict(opts, schedule=None))
            sched = "15 * * * *"
            items[table_key(d["name"], stg)] = build_table(
                d, stg, "staging", "Cleaned, typed and deduplicated %s from %s." % (what, d["source"]),
                cols, dict(opts, sources=[raw], schedule=sched))
            items["lineage/" + d["name"] + "/" + stg] = lineage_item(d["name"], stg, [raw], sched)
        for mart in d["marts"]:
            add_mart(items, d, mart)


# ---------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------

MASK_METHOD = {"email": "sha256", "work_email": "sha256", "recipient_email": "sha256",
               "lead_email": "sha256", "requester_email": "sha256", "candidate_email": "sha256",
               "contact_email": "sha256", "budget_owner_email": "sha256", "phone": "keep_last_4",
               "ip_address": "truncate_ipv4_24", "date_of_birth": "year_only", "base_salary": "nullify",
               "destination_postal_code": "truncate_3"}


def pii_masking(items, domain):
    rules = []
    for key, v in items.items():
        if key.startswith("tables/" + domain + "/") and not v["name"].startswith("raw_"):
            for c in v["columns"]:
                if c.get("pii"):
                    rules.append({"table": key, "column": c["name"],
                                  "method": MASK_METHOD.get(c["name"], "redact")})
    return rules


def build_policies(items):
    pol = {}
    for d in DOMAINS:
        n = d["name"]
        principals = ["group:" + d["team"], "group:analytics-engineers", "role:bi-service"]
        if n in ("finance", "hr"):
            principals = ["group:" + d["team"], "role:bi-service"]
        pol[n + "-read"] = {
            "description": "Read access to the %s domain (staging and marts)." % n,
            "resource": "tables/" + n + "/*",
            "principals": principals,
            "actions": ["read"],
            "effect": "allow",
            "conditions": {"environment": ["prod", "staging"], "exclude_tables": ["raw_*"]},
            "masking": pii_masking(items, n),
        }
        pol[n + "-write"] = {
            "description": "Pipelines and owners of the %s domain may write its tables." % n,
            "resource": "tables/" + n + "/*",
            "principals": ["group:" + d["team"], "service:airflow-" + n],
            "actions": ["read", "write"],
            "effect": "allow",
            "conditions": {"environment": ["prod", "staging"], "require_change_ticket": n == "finance"},
            "masking": [],
        }
    pol["raw-zone-ingestion"] = {
        "description": "Only ingestion services and the platform team touch raw tables.",
        "resource": "tables/*/raw_*",
        "principals": ["group:data-platform", "service:airbyte", "service:kafka-connect"],
        "actions": ["read", "write"],
        "effect": "allow",
        "conditions": {},
        "masking": [],
    }
    pol["deny-raw-direct-read"] = {
        "description": "Analysts and BI tools read staging and marts, never raw landed data.",
        "resource": "tables/*/raw_*",
        "principals": ["group:analysts", "group:analytics-engineers", "role:bi-service"],
        "actions": ["read"],
        "effect": "deny",
        "conditions": {},
        "masking": [],
    }
    pol["pii-default-masking"] = {
        "description": "Default masking for any column classified as pii, for every reader.",
        "resource": "tables/*",
        "principals": ["*"],
        "actions": ["read"],
        "effect": "allow",
        "conditions": {"column_tag": "pii", "exempt_principals": ["group:data-governance"]},
        "masking": [{"column_tag": "pii", "method": "redact"}],
    }
    pol["finance-sox-change-window"] = {
        "description": "No writes to finance tables outside the approved change window during close.",
        "resource": "tables/finance/*",
        "principals": ["*"],
        "actions": ["write", "delete"],
        "effect": "deny",
        "conditions": {"outside_change_window": True, "change_window": "Mon-Fri 06:00-18:00 UTC",
                       "exempt_principals": ["service:airflow-finance"]},
        "masking": [],
    }
    pol["hr-restricted"] = {
        "description": "HR data is readable only by people analytics and HR business partners.",
        "resource": "tables/hr/*",
        "principals": ["group:all-employees"],
        "actions": ["read"],
        "effect": "deny",
        "conditions": {"not_member_of": ["group:people-analytics", "group:hr-business-partners"]},
        "masking": [],
    }
    pol["internal-audit-read"] = {
        "description": "Time-boxed read access for the FY2024 internal audit.",
        "resource": "tables/*",
        "principals": ["group:internal-audit"],
        "actions": ["read"],
        "effect": "allow",
        "conditions": {"valid_until": "2024-12-31T23:59:59Z", "require_mfa": True},
        "masking": [{"column_tag": "pii", "method": "redact"}],
    }
    pol["ml-feature-read"] = {
        "description": "The feature store may read tables tagged ml-feature.",
        "resource": "tables/*",
        "principals": ["group:ml-platform", "service:feature-store"],
        "actions": ["read"],
        "effect": "allow",
        "conditions": {"table_tag": "ml-feature"},
        "masking": [{"column_tag": "pii", "method": "sha256"}],
    }
    pol["governance-admin"] = {
        "description": "Data governance administers grants and classifications on all tables.",
        "resource": "tables/*",
        "principals": ["group:data-governance"],
        "actions": ["read", "write", "grant"],
        "effect": "allow",
        "conditions": {"require_mfa": True},
        "masking": [],
    }
    pol["security-incident-response"] = {
        "description": "Break-glass read access for security incident response.",
        "resource": "tables/*",
        "principals": ["group:security-engineering"],
        "actions": ["read"],
        "effect": "allow",
        "conditions": {"require_incident_id": True, "require_mfa": True, "max_session_minutes": 120},
        "masking": [],
    }
    for name, p in pol.items():
        items["policies/" + name] = dict({"name": name}, **p)


# ---------------------------------------------------------------------------
# v1
# ---------------------------------------------------------------------------

def build_v1():
    rng = random.Random(42)
    items = {}
    for n, (key, label, desc, size, hours) in enumerate(TEAMS):
        items["owners/" + key] = owner_item(rng, key, label, desc, size, hours, oncall_phone(n + 10))
    for name, desc, category, color in TAGS:
        items["tags/" + name] = {"name": name, "description": desc, "category": category, "color": color}
    build_tables(items)
    build_policies(items)
    items["schema_version"] = {"version": 191, "migrations_in_progress": False,
                               "updated_at": "2024-05-14T09:30:00Z"}
    return items


# ---------------------------------------------------------------------------
# v2: the next release, derived from v1.  Every change is listed here:
#
#  added    owners/growth-analytics                 new team split out of marketing
#  added    tables/marketing/fct_attribution_touchpoints (+ lineage)
#  added    tables/support/fct_agent_productivity        (+ lineage)
#  removed  tables/support/agg_ticket_backlog_legacy     (+ lineage)
#  changed  tables/sales/raw_orders, stg_orders, fct_orders: new column promo_code
#  changed  tables/marketing/fct_campaign_performance: video_views, video_completion_rate
#  changed  tables/inventory/stg_stock_levels: safety_stock_qty, reorder_point
#  changed  tables/logistics/stg_shipments: package_count int32 -> int64
#  changed  tables/hr/dim_employees: column legacy_employee_code dropped
#  changed  tables/finance/fct_general_ledger: description typo fixed
#  changed  tags on sales/fct_orders, finance/fct_invoices, product/fct_feature_adoption,
#           logistics/fct_delivery_performance
#  changed  owners/marketing-analytics: new on-call phone (a sensitive field)
#  changed  policies/finance-read: bi-service removed, MFA and a network condition required
#  changed  schema_version: 191 -> 192
# ---------------------------------------------------------------------------

def find_col(table, name):
    for i, c in enumerate(table["columns"]):
        if c["name"] == name:
            return i
    raise KeyError(table["name"] + "." + name)


def add_column(items, key, name, after):
    t = items[key]
    assert name not in [c["name"] for c in t["columns"]]
    col = column(name, nullable=True) if t["name"].startswith("raw_") else column(name)
    t["columns"].insert(find_col(t, after) + 1, col)


def retag(items, key, add=(), remove=()):
    t = items[key]
    for tag in remove:
        assert tag in t["tags"], (key, tag)
    t["tags"] = sort_tags([x for x in t["tags"] if x not in remove] + list(add))


def build_v2(v1):
    items = copy.deepcopy(v1)

    # 1. New team: growth analytics, split out of marketing analytics.
    items["owners/growth-analytics"] = owner_item(
        random.Random(4242), "growth-analytics", "Growth Analytics",
        "Attribution, funnel and lifecycle analytics for growth.", 4, "business-hours",
        oncall_phone(50))

    # 2. New table: multi-touch attribution (owned by the new team).
    marketing = DOMAINS[DOMAIN_INDEX["marketing"]]
    add_mart(items, marketing, (
        "fct_attribution_touchpoints",
        "Marketing touchpoints preceding each order with multi-touch attribution weights.",
        ["stg_ad_clicks", "stg_web_sessions", "stg_email_events", "sales/fct_orders"],
        "touchpoint_id order_id visitor_id channel campaign_id touchpoint_at attribution_model "
        "attribution_weight attributed_revenue",
        {"owner": "growth-analytics", "tags": ["experimental"]}))

    # 3. New table: agent productivity; replaces the legacy backlog aggregate.
    support = DOMAINS[DOMAIN_INDEX["support"]]
    add_mart(items, support, (
        "fct_agent_productivity",
        "Daily tickets solved, chats handled, handle time and CSAT per agent.",
        ["fct_tickets", "stg_chat_sessions", "fct_csat", "dim_agents"],
        "activity_date agent_id tickets_solved chats_handled avg_handle_minutes csat_score",
        {"pk": ["activity_date", "agent_id"]}))

    # 4. Removed table: the deprecated backlog aggregate and its lineage.
    for key in list(items):
        if key.startswith("lineage/"):
            assert "tables/support/agg_ticket_backlog_legacy" not in items[key]["sources"], key
    del items["tables/support/agg_ticket_backlog_legacy"]
    del items["lineage/support/agg_ticket_backlog_legacy"]

    # 5. New columns.
    for t in ("raw_orders", "stg_orders"):
        add_column(items, "tables/sales/" + t, "promo_code", after="discount_amount")
    add_column(items, "tables/sales/fct_orders", "promo_code", after="sales_channel")
    add_column(items, "tables/marketing/fct_campaign_performance", "video_views", after="conversions")
    add_column(items, "tables/marketing/fct_campaign_performance", "video_completion_rate", after="video_views")
    add_column(items, "tables/inventory/stg_stock_levels", "safety_stock_qty", after="available_qty")
    add_column(items, "tables/inventory/stg_stock_levels", "reorder_point", after="safety_stock_qty")

    # 6. Column type change: multi-parcel freight overflowed int32.
    t = items["tables/logistics/stg_shipments"]
    c = t["columns"][find_col(t, "package_count")]
    assert c["type"] == "int32"
    c["type"] = "int64"

    # 7. Column removed: legacy HRIS code no longer exposed in the mart.
    t = items["tables/hr/dim_employees"]
    del t["columns"][find_col(t, "legacy_employee_code")]

    # 8. Description typo fix.
    t = items["tables/finance/fct_general_ledger"]
    assert "curency" in t["description"]
    t["description"] = t["description"].replace("curency", "currency")

    # 9. Tag changes.
    retag(items, "tables/sales/fct_orders", add=["tier-1", "certified"], remove=["tier-2"])
    retag(items, "tables/finance/fct_invoices", add=["certified"])
    retag(items, "tables/product/fct_feature_adoption", add=["certified"], remove=["experimental"])
    retag(items, "tables/logistics/fct_delivery_performance", add=["customer-facing"])

    # 10. The marketing on-call rotation moves to a new number with the split.  The phone is
    #     sensitive, so `sbctl plan` shows the change as <redacted> -> <redacted>.
    items["owners/marketing-analytics"]["oncall"]["phone"] = oncall_phone(51)

    # 11. Policy tightened: BI service account loses direct finance access;
    #     readers need MFA and the corporate network.
    p = items["policies/finance-read"]
    p["principals"].remove("role:bi-service")
    p["conditions"]["require_mfa"] = True
    p["conditions"]["source_network"] = ["corp-vpn"]

    # 12. Schema version bump.
    items["schema_version"] = {"version": 192, "migrations_in_progress": False,
                               "updated_at": "2024-06-04T10:00:00Z"}
    return items


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
YAML_RESERVED = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}


def yaml_key(k):
    if PLAIN_KEY.match(k) and k.lower() not in YAML_RESERVED:
        return k
    return json.dumps(k)


def yaml_scalar(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON double-quoted strings are valid YAML
    raise TypeError(type(v))


def is_inline(v):
    if isinstance(v, (dict, list)):
        return len(v) == 0
    return True


def inline(v):
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return yaml_scalar(v)


def flow_list(v):
    if v and all(not isinstance(x, (dict, list)) for x in v):
        s = "[" + ", ".join(yaml_scalar(x) for x in v) + "]"
        if len(s) <= 80:
            return s
    return None


def emit(v, indent, out):
    pad = " " * indent
    if isinstance(v, dict):
        for k, val in v.items():
            if is_inline(val):
                out.append(pad + yaml_key(k) + ": " + inline(val))
            elif isinstance(val, list) and flow_list(val):
                out.append(pad + yaml_key(k) + ": " + flow_list(val))
            else:
                out.append(pad + yaml_key(k) + ":")
                emit(val, indent + 2, out)
    elif isinstance(v, list):
        for item in v:
            if is_inline(item):
                out.append(pad + "- " + inline(item))
            elif isinstance(item, dict):
                sub = []
                emit(item, indent + 2, sub)
                sub[0] = pad + "- " + sub[0][indent + 2:]
                out.extend(sub)
            else:
                out.append(pad + "-")
                emit(item, indent + 2, out)
    else:
        out.append(pad + yaml_scalar(v))


def to_yaml(v):
    out = ["# Generated by deploy/examples/generate.py - do not edit by hand."]
    if is_inline(v):
        out.append(inline(v))
    else:
        emit(v, 0, out)
    return "\n".join(out) + "\n"


def extension(key):
    return ".yaml" if key.split("/")[0] in ("tables", "owners", "policies") else ".json"


# ---------------------------------------------------------------------------
# Validation: switchboard.yaml maps key patterns to the JSON Schemas below, which
# are written into each set under schemas/ (files named as schemas are not items).
# ---------------------------------------------------------------------------

CONFIG = """# Generated by deploy/examples/generate.py - do not edit by hand.
#
# sbctl plan and sbctl stage check every item whose key matches a pattern against
# its JSON Schema (`*` is one key segment, `**` any number of them).  The schema
# files are not items.  Fields marked "x-switchboard-sensitive" are redacted in plans.
schemas:
  - pattern: "tables/**"
    schema: schemas/table.json
  - pattern: "lineage/**"
    schema: schemas/lineage.json
  - pattern: "owners/*"
    schema: schemas/owner.json
  - pattern: "tags/*"
    schema: schemas/tag.json
  - pattern: "policies/*"
    schema: schemas/policy.json
  - pattern: "schema_version"
    schema: schemas/schema_version.json
"""

DRAFT = "https://json-schema.org/draft/2020-12/schema"
IDENT = "^[a-z_][a-z0-9_]*$"
SLUG = "^[a-z0-9][a-z0-9-]*$"
TABLE_KEY = "^tables/[a-z]+/[a-z0-9_]+$"
COLUMN_TYPE = ("^(boolean|int32|int64|string|date|timestamp|decimal\\([0-9]+,[0-9]+\\)"
               "|array<string>|map<string,string>)$")
MASK_METHODS = sorted(set(MASK_METHOD.values()) | {"redact"})


def schemas():
    domains = [d["name"] for d in DOMAINS]
    tags = [t[0] for t in TAGS]
    return {
        "table": {
            "$schema": DRAFT,
            "title": "Table",
            "description": "A table of the lake: location, columns, keys, partitioning, retention and tags.",
            "type": "object",
            "required": ["name", "domain", "description", "owner", "format", "location", "columns",
                         "primary_key", "partitioned_by", "retention_days", "tags"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": "^(raw|stg|fct|dim|agg)_[a-z0-9_]+$"},
                "domain": {"enum": domains},
                "description": {"type": "string", "minLength": 1},
                "owner": {"type": "string", "pattern": SLUG},
                "format": {"enum": ["parquet", "delta", "iceberg"]},
                "location": {"type": "string", "pattern": "^s3://[a-z0-9.-]+/.+/$"},
                "columns": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/column"}},
                "primary_key": {"type": "array", "minItems": 1, "uniqueItems": True,
                                "items": {"$ref": "#/$defs/identifier"}},
                "partitioned_by": {"type": "array", "items": {
                    "type": "string", "pattern": "^([a-z_][a-z0-9_]*|day\\([a-z_][a-z0-9_]*\\))$"}},
                "retention_days": {"type": "integer", "minimum": 1, "maximum": 3650},
                "tags": {"type": "array", "uniqueItems": True, "items": {"enum": tags}},
            },
            "$defs": {
                "identifier": {"type": "string", "pattern": IDENT},
                "column": {
                    "type": "object",
                    "required": ["name", "type", "nullable", "description"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"$ref": "#/$defs/identifier"},
                        "type": {"type": "string", "pattern": COLUMN_TYPE},
                        "nullable": {"type": "boolean"},
                        "description": {"type": "string", "minLength": 1},
                        "pii": {"const": True},
                    },
                },
            },
        },
        "lineage": {
            "$schema": DRAFT,
            "title": "Lineage",
            "description": "How a staging or mart table is built: its sources, job and schedule.",
            "type": "object",
            "required": ["target", "sources", "job", "schedule"],
            "additionalProperties": False,
            "properties": {
                "target": {"type": "string", "pattern": TABLE_KEY},
                "sources": {"type": "array", "minItems": 1, "uniqueItems": True,
                            "items": {"type": "string", "pattern": TABLE_KEY}},
                "job": {"type": "string", "pattern": "^dbt:[a-z]+\\.[a-z0-9_]+$"},
                "schedule": {"type": "string", "description": "cron: minute hour day month weekday",
                             "pattern": "^[0-9*,/-]+( [0-9*,/-]+){4}$"},
            },
        },
        "owner": {
            "$schema": DRAFT,
            "title": "Owner",
            "description": "A team that owns tables: contacts, on-call and members.",
            "type": "object",
            "required": ["name", "display_name", "description", "email", "slack", "oncall", "members"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": SLUG},
                "display_name": {"type": "string", "minLength": 1},
                "description": {"type": "string"},
                "email": {"type": "string", "format": "email"},
                "slack": {"type": "string", "pattern": "^#[a-z0-9-]+$"},
                "oncall": {
                    "type": "object",
                    "required": ["pagerduty_service", "escalation_policy", "hours", "phone"],
                    "additionalProperties": False,
                    "properties": {
                        "pagerduty_service": {"type": "string", "pattern": "^pd-[a-z0-9-]+$"},
                        "escalation_policy": {"type": "string"},
                        "hours": {"enum": ["business-hours", "24x7"]},
                        "phone": {"type": "string", "pattern": "^\\+[0-9 ]{7,20}$",
                                  "description": "On-call phone number; never shown in plans.",
                                  "x-switchboard-sensitive": True},
                    },
                },
                "members": {"type": "array", "minItems": 1, "items": {
                    "type": "object",
                    "required": ["name", "email", "role"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "email": {"type": "string", "format": "email"},
                        "role": {"type": "string"},
                    },
                }},
            },
        },
        "tag": {
            "$schema": DRAFT,
            "title": "Tag",
            "type": "object",
            "required": ["name", "description", "category", "color"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": SLUG},
                "description": {"type": "string", "minLength": 1},
                "category": {"enum": ["classification", "compliance", "criticality", "layer",
                                      "freshness", "quality", "lifecycle", "usage"]},
                "color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
            },
        },
        "policy": {
            "$schema": DRAFT,
            "title": "Access policy",
            "type": "object",
            "required": ["name", "description", "resource", "principals", "actions", "effect",
                         "conditions", "masking"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": SLUG},
                "description": {"type": "string", "minLength": 1},
                "resource": {"type": "string", "pattern": "^tables/[a-z0-9_*/]+$"},
                "principals": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {
                    "type": "string", "pattern": "^(\\*|(group|role|service):[a-z0-9-]+)$"}},
                "actions": {"type": "array", "minItems": 1, "uniqueItems": True,
                            "items": {"enum": ["read", "write", "delete", "grant"]}},
                "effect": {"enum": ["allow", "deny"]},
                "conditions": {
                    "type": "object",
                    "properties": {
                        "environment": {"type": "array", "items": {"enum": ["prod", "staging", "dev"]}},
                        "require_mfa": {"type": "boolean"},
                        "require_change_ticket": {"type": "boolean"},
                        "require_incident_id": {"type": "boolean"},
                        "max_session_minutes": {"type": "integer", "minimum": 1},
                        "valid_until": {"type": "string", "format": "date-time"},
                        "source_network": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "masking": {"type": "array", "items": {
                    "type": "object",
                    "required": ["method"],
                    "additionalProperties": False,
                    "properties": {
                        "table": {"type": "string", "pattern": TABLE_KEY},
                        "column": {"type": "string", "pattern": IDENT},
                        "column_tag": {"type": "string", "pattern": SLUG},
                        "method": {"enum": MASK_METHODS},
                    },
                }},
            },
        },
        "schema_version": {
            "$schema": DRAFT,
            "title": "Schema version",
            "description": "The version of the catalog schema, and whether a migration is running.",
            "type": "object",
            "required": ["version", "migrations_in_progress", "updated_at"],
            "additionalProperties": False,
            "properties": {
                "version": {"type": "integer", "minimum": 1},
                "migrations_in_progress": {"type": "boolean"},
                "updated_at": {"type": "string", "format": "date-time"},
            },
        },
    }


def write_config(out_dir):
    (out_dir / "switchboard.yaml").write_text(CONFIG, encoding="utf-8")
    (out_dir / "schemas").mkdir(parents=True, exist_ok=True)
    for name, schema in schemas().items():
        text = json.dumps(schema, indent=2) + "\n"
        (out_dir / "schemas" / (name + ".json")).write_text(text, encoding="utf-8")


def write_set(items, out_dir):
    if out_dir.exists():
        shutil.rmtree(out_dir)
    key_re = re.compile(r"^[A-Za-z0-9._/-]{1,512}$")
    for key in sorted(items):
        assert key_re.match(key), key
        path = out_dir / (key + extension(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        if extension(key) == ".json":
            text = json.dumps(items[key], indent=2) + "\n"
        else:
            text = to_yaml(items[key])
        assert len(text.encode()) < 10_000, key
        path.write_text(text, encoding="utf-8")


def main():
    v1 = build_v1()
    v2 = build_v2(v1)
    write_set(v1, OUT_V1)
    write_set(v2, OUT_V2)
    write_config(OUT_V1)
    write_config(OUT_V2)
    print("catalog-v1: %d items" % len(v1))
    print("catalog-v2: %d items" % len(v2))


if __name__ == "__main__":
    main()
