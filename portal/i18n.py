"""The portal's words in Chinese (the default) and English: one table, keyed by an id.

A missing translation is a test failure (tests/portal/test_portal_app.py), never a blank."""

from __future__ import annotations

LANGS = ("zh", "en")

T: dict[str, tuple[str, str]] = {
    # (zh, en)
    "title": ("信财银保 · 数据授权门户", "fedcredit portal"),
    "lang_switch": ("English", "中文"),
    "sign_in": ("登录", "Sign in"),
    "sign_out": ("退出", "Sign out"),
    "org_id": ("机构代码（统一社会信用代码或机构编号）", "Organisation id (credit code or org id)"),
    "sign_in_passkey": ("用通行密钥登录", "Sign in with a passkey"),
    "enrol": ("首次登记通行密钥", "Enrol your first passkey"),
    "enrol_code": ("运营方发放的一次性登记码", "One-time enrol code from the operator"),
    "enrol_label": ("密钥名称（例如：财务部电脑）", "Passkey name (e.g. finance office PC)"),
    "enrol_submit": ("创建通行密钥", "Create passkey"),
    "enrolled": ("通行密钥已登记，请登录。", "Passkey enrolled; sign in now."),
    "session_expired": (
        "会话因长时间未操作已过期，请重新登录。",
        "Your session expired after inactivity; sign in again.",
    ),
    "signed_out": ("已退出。", "Signed out."),
    "csrf_failed": (
        "请求无效（表单已过期或来源不明），未做任何更改。",
        "Request refused (stale form or foreign origin); nothing was changed.",
    ),
    "rate_limited": (
        "登录尝试过于频繁，请稍后再试。",
        "Too many sign-in attempts; try again later.",
    ),
    "need_sign_in": ("请先登录。", "Please sign in first."),
    "wrong_role": (
        "此页面不适用于您的机构角色。",
        "This page is not for your organisation's role.",
    ),
    "error": ("出错了", "Something went wrong"),
    "nothing_changed": ("未做任何更改。", "Nothing was changed."),
    # enterprise
    "ent_home": ("我的数据授权", "My consents"),
    "pending": ("待处理的授权请求", "Pending requests"),
    "consents": ("全部授权", "All consents"),
    "no_pending": ("没有待处理的请求。", "No pending requests."),
    "bank": ("银行", "Bank"),
    "purpose": ("用途", "Purpose"),
    "data": ("数据类别", "Data categories"),
    "nodes": ("数据来源部门", "Departments (nodes)"),
    "validity": ("有效期", "Valid for"),
    "days": ("天", "days"),
    "uses": ("使用次数", "Uses"),
    "retention": ("银行保留结果", "Bank keeps results for"),
    "state": ("状态", "State"),
    "approve": ("同意", "Approve"),
    "reject": ("拒绝", "Reject"),
    "pause": ("暂停", "Pause"),
    "resume": ("恢复", "Resume"),
    "revoke": ("撤销", "Revoke"),
    "narrow": ("收窄范围", "Narrow"),
    "remove_category": ("去掉此类别", "Remove this category"),
    "sign_with_passkey": ("将用通行密钥签署：", "You will sign with your passkey:"),
    "decided": ("已完成，凭证摘要已记入账本：", "Done; the assertion digest is in the ledger:"),
    "access": ("谁访问了我的数据", "Who accessed my data"),
    "access_intro": (
        "每条记录的包含证明与检查点签名均在您的浏览器中验证，而非依赖服务器的说法。",
        "Each entry's inclusion proof and the checkpoint signature are verified in your browser, not taken on the server's word.",
    ),
    "entry": ("记录", "Entry"),
    "kind": ("类型", "Kind"),
    "when": ("时间", "When"),
    "actor": ("操作方", "By"),
    "proof": ("证明", "Proof"),
    "verifying": ("验证中…", "verifying…"),
    "verified": ("已验证", "verified"),
    "failed": ("验证失败", "FAILED"),
    "checkpoint": ("检查点", "Checkpoint"),
    "passkeys": ("通行密钥", "Passkeys"),
    "add_passkey": ("添加通行密钥", "Add a passkey"),
    "remove": ("移除", "Remove"),
    "created": ("创建于", "Created"),
    "last_used": ("最近使用", "Last used"),
    # bank
    "bank_home": ("银行工作台", "Bank desk"),
    "request_consent": ("申请企业授权", "Request consent"),
    "enterprise": ("企业统一社会信用代码", "Enterprise credit code"),
    "max_uses": ("最多使用次数", "Maximum uses"),
    "validity_days": ("有效天数", "Validity (days)"),
    "retention_days": ("结果保留天数", "Retention (days)"),
    "submit_request": ("提交申请", "Send request"),
    "requested": (
        "已提交申请，等待企业用通行密钥确认。",
        "Requested; waiting for the enterprise to approve with its passkey.",
    ),
    "my_requests": ("我的授权", "My consents"),
    "audit_home": ("审计：账本检查点", "Audit: ledger checkpoint"),
    "audit_intro": (
        "检查点签名与一致性证明均在您的浏览器中验证。保存一个检查点，之后可验证账本只增不改。",
        "The checkpoint's signature and the consistency proofs are verified in your browser. Save a checkpoint; later ones are then checked to extend it (the log only grows).",
    ),
    "log_signature": ("日志签名", "Log signature"),
    "consistency": ("与已保存检查点的一致性", "Consistency with the saved checkpoint"),
    "saved": ("已保存的检查点", "Saved checkpoint"),
    "none_saved": ("尚未保存", "none saved yet"),
    "save_checkpoint": ("保存此检查点", "Save this checkpoint"),
    "operator_home": ("运营：发放登记码", "Operator: enrol codes"),
    "operator_intro": (
        "为机构的第一个通行密钥发放一次性登记码；需用您的通行密钥签署。登记码只显示一次。",
        "Issue a one-time code for an organisation's first passkey; you sign for it with your passkey. The code is shown once.",
    ),
    "enrol_org": ("机构代码", "Organisation id"),
    "enrol_role": ("角色", "Role"),
    "enrol_expires": ("有效期（如 30m、12h、7d）", "Valid for (e.g. 30m, 12h, 7d)"),
    "issue_code": ("签署并发放", "Sign and issue"),
    "role_home": ("工作台", "Home"),
    "role_pages_todo": (
        "此角色的完整页面尚在建设中；请使用命令行 `fedcredit --help`。",
        "This role's full pages are not built yet; use the command line (`fedcredit --help`).",
    ),
    # department (portal/dept_pages.py)
    "dept_home": ("部门节点", "Department node"),
    "dept_no_node": (
        "本部署中没有您机构的数据节点。",
        "This deployment has no data node for your organisation.",
    ),
    "dept_status": ("节点状态", "Node status"),
    "dept_node": ("节点", "Node"),
    "dept_reachable": ("可访问", "Reachable"),
    "dept_unreachable": ("无法连接节点", "the node does not answer"),
    "yes": ("是", "yes"),
    "dept_data_month": ("数据所属月份", "Data month"),
    "dept_data_version": ("数据版本", "Data version"),
    "dept_features": ("特征数", "Features"),
    "dept_data_age": ("距上次加载数据", "Data loaded"),
    "dept_disclosures": ("数据披露次数（按银行与用途）", "Disclosures by bank and purpose"),
    "dept_disclosures_intro": (
        "自节点本次启动以来，为各银行披露的企业特征向量数；每一次披露都记入账本。",
        "Enterprises' feature vectors disclosed since the node last started, per bank and purpose; every single disclosure is in the ledger.",
    ),
    "dept_no_metrics": (
        "节点未提供指标（metrics），无法统计披露次数。",
        "The node serves no metrics, so disclosures cannot be counted here.",
    ),
    "dept_none_disclosed": ("尚无披露。", "Nothing disclosed yet."),
    "total": ("合计", "total"),
    "count": ("次数", "Count"),
    # operator health (portal/ops_pages.py)
    "ops_health": ("运营：服务状态", "Operator: service health"),
    "ops_no_services": (
        "门户未配置要监测的服务。",
        "The portal has no services configured to watch.",
    ),
    "ops_health_intro": (
        "每个服务的 gRPC 健康检查与关键指标，与 `fedcredit status` 所示相同。",
        "Each service's gRPC health check and key metrics, as `fedcredit status` shows them.",
    ),
    "ops_service": ("服务", "Service"),
    "ops_address": ("地址", "Address"),
    "ops_healthy": ("健康", "Health"),
    "ops_serving": ("正常", "SERVING"),
    "ops_down": ("无响应", "down"),
    "m_requests": ("请求", "Requests"),
    "m_refusals": ("拒绝", "Refusals"),
    "m_disclosures": ("披露", "Disclosures"),
    "m_verifications": ("授权校验", "Consent checks"),
    "m_ledger_size": ("账本条目", "Ledger entries"),
    "m_checkpoint_age_s": ("检查点时长（秒）", "Checkpoint age (s)"),
    "m_data_age_s": ("数据时长（秒）", "Data age (s)"),
    "m_training_rounds": ("训练轮次", "Training rounds"),
    "m_models_published": ("已发布模型", "Models published"),
    "skip": ("跳到主要内容", "Skip to main content"),
}

PURPOSES: dict[str, tuple[str, str]] = {
    "credit_assessment": ("授信评估", "credit assessment"),
    "guarantee": ("担保审批", "guarantee decision"),
    "post_loan_monitoring": ("贷后监测", "post-loan monitoring"),
    "model_training": ("模型训练", "model training"),
}

# Consent-scope categories (common.departments), as the enterprise reads them.
CATEGORIES: dict[str, tuple[str, str]] = {
    "composition": ("工商登记信息", "company registration"),
    "operations_tax": ("纳税信息", "tax records"),
    "social_security": ("社保缴纳", "social insurance"),
    "medical_insurance": ("医保缴纳", "medical insurance"),
    "staff_benefits": ("住房公积金", "housing provident fund"),
    "intellectual_property": ("知识产权", "intellectual property"),
    "judicial": ("司法诉讼", "court records"),
    "public_credit": ("公共信用", "public credit"),
    "operations_utilities": ("水电用量", "electricity and water use"),
    "trade": ("海关进出口", "customs and trade"),
    "assets": ("不动产与自然资源", "land and property"),
    "shareholder_credit": ("股东信用", "shareholders' credit"),
    "score_only": ("仅评分（不披露原始数据）", "a score only (no data disclosed)"),
}

NODES: dict[str, tuple[str, str]] = {
    "dept-market-regulation": ("市场监管局", "market regulation"),
    "dept-tax": ("税务局", "tax bureau"),
    "dept-social-security": ("人社局", "human resources and social security"),
    "dept-medical-insurance": ("医保局", "medical insurance"),
    "dept-housing-fund": ("公积金中心", "housing provident fund"),
    "dept-ip": ("知识产权局", "intellectual property office"),
    "dept-courts": ("法院", "courts"),
    "dept-public-credit": ("公共信用中心", "public credit center"),
    "dept-utilities": ("水电公司", "utilities"),
    "dept-customs": ("海关", "customs"),
    "dept-natural-resources": ("自然资源局", "natural resources"),
    "dept-shareholders": ("股东信用登记", "shareholder credit registry"),
}

STATES: dict[str, tuple[str, str]] = {
    "PENDING": ("待确认", "pending"),
    "ACTIVE": ("有效", "active"),
    "PAUSED": ("已暂停", "paused"),
    "REJECTED": ("已拒绝", "rejected"),
    "REVOKED": ("已撤销", "revoked"),
    "EXPIRED": ("已过期", "expired"),
}


# The marketplace's pages (portal/market_pages.py, templates/market/).
MARKET_T: dict[str, tuple[str, str]] = {
    "mk_ent_title": ("融资需求与报价", "Financing needs and offers"),
    "mk_ent_intro": (
        "银行只能看到您的需求的分档信息（等级档、行业、地区、规模档、金额档），在您授权前看不到您的名称和评分。",
        "Banks see your need in bands only (grade band, industry, region, size and amount bands); "
        "your name and score reach a bank only under a consent you grant it.",
    ),
    "mk_post_need": ("发布融资需求", "Post a financing need"),
    "mk_amount_yuan": ("金额（元）", "Amount (yuan)"),
    "mk_term_months": ("期限（月）", "Term (months)"),
    "mk_post_submit": ("发布需求", "Post need"),
    "mk_my_needs": ("我的融资需求", "My needs"),
    "mk_no_needs": ("还没有发布需求。", "No needs posted yet."),
    "mk_offer": ("报价", "Offer"),
    "mk_until": ("截止", "Until"),
    "mk_actions": ("操作", "Actions"),
    "mk_accept": ("接受报价", "Accept offer"),
    "mk_decline": ("拒绝报价", "Decline offer"),
    "mk_why": ("拒绝原因（可选）", "Reason (optional)"),
    "mk_withdraw": ("撤回需求", "Withdraw need"),
    "mk_my_loans": ("我的贷款", "My loans"),
    "mk_no_loans": ("没有贷款。", "No loans."),
    "mk_principal": ("本金（元）", "Principal (yuan)"),
    "mk_repaid": ("已还（元）", "Repaid (yuan)"),
    "mk_need_posted": ("需求已发布。", "Need posted."),
    "mk_accepted": ("已接受报价。", "Offer accepted."),
    "mk_declined": ("已拒绝报价，需求重新开放。", "Offer declined; the need is open again."),
    "mk_withdrawn": ("需求已撤回。", "Need withdrawn."),
    "mk_p_working_capital": ("流动资金", "Working capital"),
    "mk_p_equipment": ("设备购置", "Equipment"),
    "mk_p_expansion": ("扩大经营", "Expansion"),
    "mk_p_trade": ("贸易融资", "Trade"),
    "mk_p_refinancing": ("借新还旧", "Refinancing"),
    "mk_s_OPEN": ("待抢单", "Open"),
    "mk_s_CLAIMED": ("已被抢单", "Claimed"),
    "mk_s_OFFERED": ("已报价", "Offered"),
    "mk_s_ACCEPTED": ("已接受", "Accepted"),
    "mk_s_WITHDRAWN": ("已撤回", "Withdrawn"),
    "mk_bank_title": ("融资撮合（抢单）", "Marketplace: leads and grab orders"),
    "mk_bank_intro": (
        "需求以分档形式展示；企业名称和评分只有在企业向本行授权（用途：融资撮合）后才会提供。",
        "Needs show in bands; an enterprise's name and score come only with its consent "
        "to your bank (purpose: marketplace).",
    ),
    "mk_open_needs": ("可抢的需求", "Open needs"),
    "mk_no_open": ("当前没有可抢的需求。", "No open needs right now."),
    "mk_grade_band": ("等级档", "Grade band"),
    "mk_industry": ("行业", "Industry"),
    "mk_region": ("地区", "Region"),
    "mk_size_band": ("规模档", "Size band"),
    "mk_amount_band": ("金额档", "Amount band"),
    "mk_claim": ("抢单", "Claim"),
    "mk_claimed": ("抢单成功，请在独占期内报价。", "Claimed; offer within the exclusivity window."),
    "mk_my_claims": ("本行抢到的需求", "My claims"),
    "mk_no_claims": ("没有进行中的抢单。", "No claims in progress."),
    "mk_consent_released": ("企业授权", "Consent released"),
    "mk_product": ("产品", "Product"),
    "mk_rate_bp": ("利率（基点）", "Rate (basis points)"),
    "mk_make_offer": ("报价", "Make offer"),
    "mk_offered": ("报价已发送给企业。", "Offer sent to the enterprise."),
    "mk_no_products": ("本行还没有发布信贷产品。", "Your bank has published no credit product."),
    "mk_leads": ("平台推送的线索", "Leads pushed by the platform"),
    "mk_no_leads": ("没有推送的线索。", "No pushed leads."),
    "mk_loan_book": ("贷款台账", "Loan book"),
    "mk_loans": ("笔数", "Loans"),
    "mk_grade": ("等级", "Grade"),
    "mk_fund_share": ("基金担保份额（元）", "Fund share (yuan)"),
    "mk_loss": ("损失（元）", "Loss (yuan)"),
    "mk_warnings": ("贷后预警", "Post-loan warnings"),
    "mk_no_warnings": ("没有预警。", "No warnings."),
    "mk_funds_title": ("基金项目管理", "Fund pipeline and report"),
    "mk_no_funds": ("本机构没有管理的基金。", "Your institution manages no fund."),
    "mk_applications": ("申请数", "Applications"),
    "mk_success_rate": ("成功率", "Success rate"),
    "mk_cycle_p50": ("决策周期中位数（小时）", "Decision cycle, median (hours)"),
    "mk_invested": ("已投资（元）", "Invested (yuan)"),
    "mk_pipeline": ("按状态的申请", "Applications by state"),
    "mk_decline_reasons": ("拒绝原因", "Decline reasons"),
    "mk_reason": ("原因", "Reason"),
    "mk_nav_market": ("融资撮合", "Marketplace"),
}
T.update(MARKET_T)

# the auditor's witnesses, export and the operator's model registry
# (portal/audit_pages.py, portal/model_pages.py)
AUDIT_T: dict[str, tuple[str, str]] = {
    "au_witnesses": ("见证方联署", "Witness cosignatures"),
    "au_witnesses_intro": (
        "每个见证方的联署（C2SP tlog-cosignature）都在您的浏览器中用部署公布的见证方公钥验证：已验证、验证失败（签名不符：伪造或被篡改）或缺失（该见证方尚未联署此检查点）。",
        "Each witness's cosignature (C2SP tlog-cosignature) is verified in your browser with the witness key the deployment publishes: verified, FAILED (the signature does not verify: forged or altered) or missing (the witness has not cosigned this checkpoint).",
    ),
    "au_no_witnesses": ("本部署未公布见证方公钥。", "This deployment publishes no witness keys."),
    "au_witness": ("见证方", "Witness"),
    "au_cosignature": ("联署", "Cosignature"),
    "au_cosigned_at": ("联署时间（UTC）", "Cosigned at (UTC)"),
    "au_key": ("公布的公钥", "Published key"),
    "au_missing": ("缺失", "missing"),
    "au_quorum": ("见证方法定数", "Witness quorum"),
    "au_quorum_met": ("已达到", "met"),
    "au_quorum_not_met": ("未达到", "NOT met"),
}
T.update(AUDIT_T)


def tr(key: str, lang: str) -> str:
    zh, en = T[key]
    return en if lang == "en" else zh


def word(table: dict[str, tuple[str, str]], key: str, lang: str) -> str:
    got = table.get(key)
    if got is None:
        return key
    return got[1] if lang == "en" else got[0]
