import './base.css';
import './tabs.css';
